"""Importing user code named ``package.module:attribute`` (model factories, metrics)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .errors import EnpheephError


def load_object(spec: str, option: str) -> Any:
    """Import ``package.module:attr`` (``attr`` may be dotted) and return the attribute.

    The current folder is importable, as with ``python -m``: ``tests.exportable:small_cnn``
    works from the project root without installing anything.

    Args:
        spec: ``package.module:attr``.
        option: the option that named it (``--model``, ``--metric``), for messages.

    Raises:
        EnpheephError: a malformed spec, a module that cannot be imported (any error its
            import raises), a missing attribute.
    """
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name.strip() or not attr.strip():
        raise EnpheephError(f"{option} {spec!r}: write package.module:name")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # any import-time error of user code
        raise EnpheephError(f"cannot import {mod_name!r} for {option}: "
                            f"{type(e).__name__}: {e}") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise EnpheephError(f"module {mod_name!r} has no {attr!r} (from {option} {spec!r})")
        obj = getattr(obj, part)
    return obj


def load_callable(spec: str, option: str) -> Any:
    """:func:`load_object`, refusing what is not callable.

    Raises:
        EnpheephError: as :func:`load_object`, or the attribute is not callable.
    """
    obj = load_object(spec, option)
    if not callable(obj):
        raise EnpheephError(f"{option} {spec!r} is not callable ({type(obj).__name__})")
    return obj
