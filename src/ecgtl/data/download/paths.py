"""Path safety: the one check that a relative path from outside cannot escape its folder.

Relative paths reach this package from the network or from archives: the lines of a
``SHA256SUMS.txt`` and the member names of a zip file. :func:`path_problem` is the single
check both go through before anything is written: no absolute path (``/x``, ``\\x``,
``C:x``), no ``..`` component, no NUL byte.
"""

from __future__ import annotations

import re

__all__ = ["path_problem"]


def path_problem(name: str, *, allow_empty_parts: bool = False) -> str | None:
    """Why ``name`` is not a safe relative path, or ``None`` when it is.

    ``/`` and ``\\`` both separate components. A checksum list names files only, so by
    default an empty or ``.`` component (``a//b``, ``./a``, ``a/``, ``""``) is refused too;
    zip member names legitimately contain them (``dir/``), so ``allow_empty_parts=True``
    lets them through. The reason is a short phrase such as ``"'..' in path"``.
    """
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in parts:
        return "'..' in path"
    if "\x00" in name:
        return "NUL in name"
    if not allow_empty_parts and any(p in ("", ".") for p in parts):
        return "empty or '.' component"
    return None
