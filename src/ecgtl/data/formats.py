"""The project's own versioned JSON file formats (split files, ensemble files): one checked reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ecgtl.errors import ConfigError

__all__ = ["read_format_json"]


def read_format_json(path: str | os.PathLike, what: str, fmt: str, version: int, body: str, body_type: type) -> dict:
    """The JSON object of one of the project's own file formats (split files, ensemble files), checked.

    The file must hold an object whose ``format`` is ``fmt``, whose ``version`` is ``version`` and
    whose ``body`` key is a ``body_type``; else :class:`~ecgtl.errors.ConfigError` names the file,
    ``what`` it should be (e.g. ``"split file"``) and the problem.
    """
    where = os.fspath(path)
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: unreadable {what} ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt or not isinstance(doc.get(body), body_type):
        raise ConfigError(f"{where}: not an ecgtl {what} (expected a JSON object with format {fmt!r} and {body!r})")
    if doc.get("version") != version:
        raise ConfigError(f"{where}: unsupported {what} version {doc.get('version')!r} (expected {version})")
    return doc
