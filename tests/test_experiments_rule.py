"""The experiments grade claims by one rule (experiments/_verdict.py): standard errors from the
*sample* standard deviation (ddof=1). The helpers are checked against ``statistics.stdev``, and no
script computes a spread of its own."""

import ast
import math
import pathlib
import statistics
import sys

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def test_sample_std_and_seed_summary_use_ddof_1():
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        import _verdict
    finally:
        sys.path.remove(str(EXPERIMENTS))
    values = [0.81, 0.86, 0.90, 0.79]
    assert math.isclose(_verdict.sample_std(values), statistics.stdev(values), rel_tol=1e-14)
    assert math.isnan(_verdict.sample_std([0.5]))
    mean, se = _verdict.mean_se(values)
    assert math.isclose(se, statistics.stdev(values) / 2, rel_tol=1e-14)
    assert _verdict.grade(1.0, 0.0, _verdict.seed_se(_verdict.sample_std([1.0]), 1), 0.1) == _verdict.NOT_SHOWN
    summary = _verdict.seed_summary([{"a": v} for v in values])
    assert math.isclose(summary["a"][0], statistics.fmean(values), rel_tol=1e-14)
    assert math.isclose(summary["a"][1], statistics.stdev(values), rel_tol=1e-14)


def test_no_experiment_computes_a_standard_deviation_of_its_own():
    """Every spread over seeds goes through ``_verdict`` (``sample_std``, ``mean_std``, ``mean_se``,
    ``seed_summary``): no ``.std(...)``, ``statistics.stdev`` or ``pstdev`` in the scripts, except
    a data normalization that says so on its line."""
    offenders = []
    for path in sorted(EXPERIMENTS.glob("*.py")):
        if path.name == "_verdict.py":
            continue
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "std", "stdev", "pstdev") and "normalizes the" not in lines[node.lineno - 1]:
                offenders.append(f"{path.name}:{node.lineno} .{node.func.attr}()")
    assert not offenders, offenders
