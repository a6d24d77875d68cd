"""Zip extraction that never writes outside its target folder.

Every member is checked before anything is written: its name through
:func:`~ecgtl.data.download.paths.path_problem`, its type (no symbolic links, no special
files). Members go to a temporary folder inside the target whose top-level entries are then
renamed into place, so a crash never leaves a half-extracted tree under the final name.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from ecgtl.data.download.paths import path_problem
from ecgtl.errors import DownloadError

__all__ = ["extract_zip"]

_COPY_BUFFER = 1 << 20


def _zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    problem = path_problem(name, allow_empty_parts=True)  # directories end with '/'
    if problem:
        return problem
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_ISLNK(mode):
        return "symbolic link"
    # Many writers leave the type bits at 0; only a type that is set and not file/dir is odd.
    if info.create_system == 3 and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "special file"
    if not any(p not in ("", ".") for p in name.replace("\\", "/").split("/")):
        return "empty name"
    return None


def extract_zip(archive: str | os.PathLike, target: str | os.PathLike) -> bool:
    """Safely extract ``archive`` into the folder ``target``; return False if already there.

    Every member is checked before anything is written: an absolute path, a ``..``
    component, a symbolic link or a special file raises :class:`DownloadError` naming the
    member. Extraction goes to a temporary folder inside ``target`` whose top-level entries
    are then renamed into place, so a crash never leaves a half-extracted tree under the
    final name. It is skipped when every member already exists with the right size.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{archive}: not a readable zip archive: {e}") from None
    with zf:
        members = zf.infolist()
        for info in members:
            problem = _zip_member_problem(info)
            if problem:
                raise DownloadError(f"{archive.name}: refusing member {info.filename!r}: {problem}")
        if _already_extracted(members, target):
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extracting", dir=target))
        try:
            tmp_real = os.path.realpath(tmp)
            tops: set[str] = set()
            for info in members:
                rel = "/".join(p for p in info.filename.replace("\\", "/").split("/") if p not in ("", "."))
                out = tmp / rel
                # Belt and braces after the name checks: the resolved path must stay inside.
                if os.path.commonpath([tmp_real, os.path.realpath(out)]) != tmp_real:
                    raise DownloadError(f"{archive.name}: refusing member {info.filename!r}: escapes target")
                tops.add(rel.split("/", 1)[0])
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, _COPY_BUFFER)
            trash = tmp / ".old"
            for top in sorted(tops):
                final = target / top
                if final.exists() or final.is_symlink():
                    # Moved aside (atomic) rather than deleted first, so the swap is quick.
                    trash.mkdir(exist_ok=True)
                    os.replace(final, trash / top)
                os.replace(tmp / top, final)
        except zipfile.BadZipFile as e:
            raise DownloadError(f"{archive}: corrupt zip archive: {e}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def _already_extracted(members: Sequence[zipfile.ZipInfo], target: Path) -> bool:
    for info in members:
        path = target / info.filename
        if info.is_dir():
            if not path.is_dir():
                return False
        else:
            try:
                if path.stat().st_size != info.file_size:
                    return False
            except OSError:
                return False
    return True
