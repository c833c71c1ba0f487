"""Every public function and class (the names the public-API test pins) has a docstring of at
least one sentence: what it is, for the API reference and for ``help()``."""

import inspect

from .test_public_api import EXPECTED


def test_every_public_function_and_class_has_a_docstring():
    missing = []
    for module, names in EXPECTED.items():
        for name in sorted(names):
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            own = inspect.getdoc(obj) if inspect.isfunction(obj) else obj.__dict__.get("__doc__")
            generated = own is not None and own.startswith(f"{obj.__name__}(")  # a dataclass's or NamedTuple's signature
            if not own or generated or len(own.split()) < 4 or not any(mark in own for mark in ".:"):
                missing.append(f"{module.__name__}.{name}")
    assert not missing, missing


# The math packages: every public function shows what it computes in an example that runs as a
# doctest (pytest's --doctest-modules runs them). data, models and training build runs rather
# than compute a formula; the three plotting functions of metrics draw figures.
MATH_PACKAGES = ("divreg.alignment", "divreg.divergences", "divreg.divergences.kernels", "divreg.estimators",
                 "divreg.fused", "divreg.generation", "divreg.losses", "divreg.metrics", "divreg.reductions",
                 "divreg.regularizers", "divreg.rl", "divreg.schedules", "divreg.targets")
NOT_MATH = {"divreg.metrics": {"metric_bars", "reliability_diagrams", "training_curves"}}


def test_every_public_function_of_the_math_packages_has_a_doctest_example():
    names = {module.__name__: (module, names) for module, names in EXPECTED.items()}
    assert set(MATH_PACKAGES) <= set(names), "a math package is not pinned by the public-API test"
    missing = []
    for package in MATH_PACKAGES:
        module, public = names[package]
        for name in sorted(public - NOT_MATH.get(package, set())):
            obj = getattr(module, name)
            if inspect.isfunction(obj) and ">>>" not in (inspect.getdoc(obj) or ""):
                missing.append(f"{package}.{name}")
    assert not missing, missing
