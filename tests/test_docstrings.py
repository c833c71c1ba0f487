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
            if not own or len(own.split()) < 4 or not any(mark in own for mark in ".:"):
                missing.append(f"{module.__name__}.{name}")
    assert not missing, missing
