"""Import paths of the form ``package.module:attribute`` (PyCall functions, custom merges)."""

from __future__ import annotations

import importlib
import re
from typing import Any

__all__ = ["IMPORT_PATH_PATTERN", "check_import_path", "import_object"]

IMPORT_PATH_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def check_import_path(value: str) -> str:
    """Check the syntax of an import path; raise ``ValueError`` saying what a good one looks like."""
    if not IMPORT_PATH_PATTERN.match(value):
        raise ValueError(f"{value!r} is not an import path; expected 'package.module:function'")
    return value


def import_object(path: str) -> Any:
    """Import ``package.module:attribute`` and return the attribute.

    Raises:
        ImportError: the module or the attribute does not exist (the message says which).
    """
    check_import_path(path)
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import {path!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ImportError(
                f"cannot import {path!r}: module {module_name!r} has no {attribute!r}"
            ) from None
    return target
