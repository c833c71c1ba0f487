"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a page missing
from the navigation or a docstring that does not render fails), its API reference has an entry
for every public name the public-API test pins, and every Python example in the README and the
site's pages runs as written."""

import pathlib
import re
import subprocess
import sys

import pytest

from .test_public_api import EXPECTED

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_site_builds_strictly_and_documents_every_public_name(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') builds the site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    anchors = set()
    for page in (tmp_path / "api").rglob("*.html"):
        anchors |= set(re.findall(r'id="(divreg\.[\w.]+)"', page.read_text()))
    missing = [f"{module.__name__}.{name}" for module, names in EXPECTED.items() if module.__name__ != "divreg"
               for name in names if f"{module.__name__}.{name}" not in anchors]
    assert not missing, missing


PYTHON_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
PAGES_WITH_EXAMPLES = [page for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
                       if PYTHON_BLOCK.search(page.read_text())]


def test_the_pages_with_python_examples_are_found():
    names = {page.relative_to(ROOT).as_posix() for page in PAGES_WITH_EXAMPLES}
    assert {"README.md", "docs/getting-started.md", "docs/library/divergences.md", "docs/library/fused.md"} <= names


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES_WITH_EXAMPLES])
def test_every_python_example_of_a_page_runs_as_written(page, capsys):
    """A page's ```python blocks run in order in one namespace (a later block may use what an
    earlier one defined), as a reader pasting them one after the other would."""
    namespace = {"__name__": "__docs_example__"}
    for index, block in enumerate(PYTHON_BLOCK.findall(page.read_text())):
        exec(compile(block, f"{page.relative_to(ROOT)} (python block {index + 1})", "exec"), namespace)


def test_every_command_has_a_guide_with_its_options_table():
    from divreg.cli import COMMANDS

    guides = "\n".join(page.read_text() for page in (ROOT / "docs" / "commands").glob("*.md"))
    missing = [name for name in COMMANDS if name != "demo" and f"<!-- divreg-options: {name} -->" not in guides]
    assert not missing, f"commands without an options table in docs/commands: {missing}"


def test_the_seed_coverage_page_lists_every_cited_paper():
    """Every arXiv id that a module of divreg or an experiment cites is a row of
    docs/results/coverage.md (the seed-coverage table)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    cited = {}
    for path in [*(root / "src" / "divreg").rglob("*.py"), *(root / "experiments").glob("*.py")]:
        for arxiv in re.findall(r"arXiv:? ?(\d{4}\.\d{4,5})", path.read_text()):
            cited.setdefault(arxiv, path.relative_to(root).as_posix())
    page = (root / "docs" / "results" / "coverage.md").read_text()
    rows = set(re.findall(r"^\|[^|]*\| (\d{4}\.\d{4,5}) \|", page, flags=re.MULTILINE))
    missing = {arxiv: where for arxiv, where in cited.items() if arxiv not in rows}
    assert not missing, f"cited but not on the seed-coverage page: {missing}"
    assert len(rows) >= 50
