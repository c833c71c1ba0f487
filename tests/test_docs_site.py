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
