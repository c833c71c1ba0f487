"""The layering of the package: a module imports only lower layers (or its own package), and
never another package's private module."""

import ast
import pathlib

SOURCE = pathlib.Path(__file__).resolve().parents[1] / "src" / "divreg"
# config and _table are utilities that import nothing of divreg: a bottom layer; alignment sits just above
# divergences (its exact KL is the zoo's)
LAYERS = {"config": 1, "_table": 1, "alignment": 2, "divergences": 1, "estimators": 1, "reductions": 1, "data": 1, "metrics": 1, "fused": 2, "targets": 3,
          "schedules": 3, "losses": 4, "regularizers": 4, "rl": 4, "models": 5, "training": 5, "generation": 5,
          "recipes": 6, "cli": 7}


def _imports(path: pathlib.Path):
    """(imported module as a dotted path inside divreg, line) for every divreg import of a file."""
    package = path.relative_to(SOURCE.parent).with_suffix("").parts
    package = package[:-1] if path.name == "__init__.py" else package[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("divreg"):
                target = node.module.split(".")
            else:
                continue
            yield target, node.lineno
            if not node.module:
                for alias in node.names:  # from .. import divergences
                    yield [*target, alias.name], node.lineno


def test_layers_and_private_modules():
    problems = []
    for path in sorted(SOURCE.rglob("*.py")):
        own = path.relative_to(SOURCE).parts[0].removesuffix(".py")
        for target, line in _imports(path):
            if len(target) < 2 or target[1] not in LAYERS or target[1] == own:
                continue
            where = f"{path.relative_to(SOURCE)}:{line} imports {'.'.join(target)}"
            if own in LAYERS and LAYERS[target[1]] >= LAYERS[own]:
                problems.append(f"{where} (layer {LAYERS[target[1]]} from layer {LAYERS[own]})")
            if any(part.startswith("_") and part != "__init__" for part in target[2:]):
                problems.append(f"{where} (another package's private module)")
    assert not problems, "\n".join(problems)
