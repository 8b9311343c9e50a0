"""The public surface: one sorted ``__all__`` that is exactly what the package exports.

The test checks the rules, not a list of names, so names added later are held to them too.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import pytest

import apigw_mw


def _public_exports() -> set[str]:
    """Public attributes of the package that are not its submodules or ``__future__`` flags."""
    names = set()
    for name, value in vars(apigw_mw).items():
        if name.startswith("_") and name != "__version__":
            continue
        if name.startswith("__") and name != "__version__":
            continue
        if isinstance(value, types.ModuleType) or type(value).__name__ == "_Feature":
            continue
        names.add(name)
    return names


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's ``__all__`` order (RUF022): CONSTANTS, then Classes, then everything else."""
    if name.isupper():
        return 0, name
    if name[0].isupper():
        return 1, name
    return 2, name


def test_all_is_sorted_and_unique():
    assert apigw_mw.__all__ == sorted(apigw_mw.__all__, key=_isort_key)
    assert len(set(apigw_mw.__all__)) == len(apigw_mw.__all__)


def test_all_is_exactly_what_the_package_exports():
    assert set(apigw_mw.__all__) == _public_exports()


def test_star_import_gives_all():
    namespace: dict[str, Any] = {}
    exec("from apigw_mw import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(apigw_mw.__all__)


def _documented(name: str) -> Any:
    value = getattr(apigw_mw, name)
    if inspect.isclass(value) or inspect.isfunction(value) or inspect.ismethod(value):
        return value
    return None  # constants (__version__, mappings) carry no docstring of their own


@pytest.mark.parametrize("name", [n for n in apigw_mw.__all__ if _documented(n) is not None])
def test_every_public_class_and_function_has_a_docstring(name):
    obj = _documented(name)
    own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert own, f"apigw_mw.{name} has no docstring"
    assert own.strip(), f"apigw_mw.{name} has an empty docstring"


def test_public_objects_live_in_the_package():
    for name in apigw_mw.__all__:
        module = getattr(getattr(apigw_mw, name), "__module__", None)
        if module is not None and (inspect.isclass(getattr(apigw_mw, name))):
            assert module.startswith("apigw_mw"), (name, module)


def test_version_is_a_string():
    assert isinstance(apigw_mw.__version__, str)
    assert apigw_mw.__version__[0].isdigit()
