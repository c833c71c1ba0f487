"""The experiments grade claims by one rule (experiments/_verdict.py): standard errors from the
*sample* standard deviation (ddof=1). The helper is checked against ``statistics.stdev``, and no
script computes a spread with numpy's population default."""

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
    assert _verdict.grade(1.0, 0.0, _verdict.seed_se(_verdict.sample_std([1.0]), 1), 0.1) == _verdict.NOT_SHOWN
    summary = _verdict.seed_summary([{"a": v} for v in values])
    assert math.isclose(summary["a"][0], statistics.fmean(values), rel_tol=1e-14)
    assert math.isclose(summary["a"][1], statistics.stdev(values), rel_tol=1e-14)


def test_no_experiment_uses_a_population_standard_deviation():
    """A ``.std(...)`` call must say its correction (numpy's default is the population ddof=0):
    spreads go through ``_verdict.sample_std`` / ``mean_std`` or ``statistics.stdev``."""
    offenders = []
    for path in sorted(EXPERIMENTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                keywords = {k.arg for k in node.keywords}
                if node.func.attr == "std" and not keywords & {"ddof", "correction", "unbiased"}:
                    offenders.append(f"{path.name}:{node.lineno} .std() without its correction")
                if node.func.attr == "pstdev":
                    offenders.append(f"{path.name}:{node.lineno} statistics.pstdev")
    assert not offenders, offenders
