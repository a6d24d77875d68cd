"""Zip extraction that never writes outside its target folder and never destroys a user's file.

Every member is checked before anything is written: its name through
:func:`~ecgtl.data.download.paths.path_problem`, its type (no symbolic links, no special
files), and that it does not land on a protected file (a verified download next to the
archive, the archive itself, the extraction record).

What extraction wrote is recorded in ``<target>/<archive name>.extracted.json`` (each
member's size and CRC-32), so that a rerun tells its own files from the user's:

- a member whose file is missing is written (first extraction, or a file the user deleted);
- a file equal to the member (size and CRC-32) is left alone;
- a file that extraction wrote and nobody changed since, but the archive now holds another
  version of, is refreshed;
- any other file (the user's own, or one of ours the user edited), a symbolic link, or a
  folder where a member's file should be, is **kept** and reported in
  :attr:`ExtractResult.kept`; it is never overwritten;
- nothing is ever deleted: files the user added next to the extracted ones stay.

Members are first extracted into a temporary folder inside the target and then renamed into
place one by one (a rename in one file system is atomic), and the record is written before
the first rename, so a crash leaves complete files that the next run recognises as its own.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ecgtl.data.download.paths import path_problem
from ecgtl.errors import DownloadError
from ecgtl.fileio import atomic_write

__all__ = ["MANIFEST_SUFFIX", "ExtractResult", "extract_archive", "extract_zip", "manifest_path"]

log = logging.getLogger(__name__)

_COPY_BUFFER = 1 << 20
MANIFEST_SUFFIX = ".extracted.json"
_MANIFEST_FORMAT = "ecgtl-extracted"


@dataclass
class ExtractResult:
    """What one extraction did: ``written`` members (new, restored or refreshed) and ``kept``
    ``(member, why)`` pairs: files in the way that are not extraction's own, left untouched."""

    archive: Path
    target: Path
    written: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)


def manifest_path(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """The record of what extracting ``archive`` into ``target`` wrote."""
    return Path(target) / f"{Path(archive).name}{MANIFEST_SUFFIX}"


def _clean(name: str) -> str:
    """A member name as a relative path: ``/`` separators, no empty or ``.`` parts."""
    return "/".join(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


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
    if not _clean(name):
        return "empty name"
    return None


def extract_zip(archive: str | os.PathLike, target: str | os.PathLike, protect: Iterable[str] = ()) -> bool:
    """Safely extract ``archive`` into the folder ``target``; True if any file was written.

    See :func:`extract_archive`, which also returns the files kept; this form logs them.
    """
    result = extract_archive(archive, target, protect=protect)
    if result.kept:
        log.warning("%s: %s", Path(archive).name, describe_kept(result.kept))
    return bool(result.written)


def describe_kept(kept: list[tuple[str, str]], limit: int = 10) -> str:
    """One line for the user: which files extraction left alone, and how to get the archive's version."""
    names = ", ".join(f"{rel} ({why})" for rel, why in kept[:limit])
    more = f" and {len(kept) - limit} more" if len(kept) > limit else ""
    return (f"kept {len(kept)} file(s) you changed or put there: {names}{more}; "
            "the archive's version was not written (delete or rename a file and rerun to get it)")


def extract_archive(
    archive: str | os.PathLike,
    target: str | os.PathLike,
    *,
    protect: Iterable[str] = (),
    clean_leftovers: bool = False,
) -> ExtractResult:
    """Extract ``archive`` into ``target`` without overwriting or deleting anything it did not write.

    ``protect`` lists paths relative to ``target`` (e.g. the verified downloads next to the
    archive): a member landing on one of them (or inside it, or differing only in case)
    raises :class:`DownloadError` naming the member, as do an absolute path, a ``..``
    component, a symbolic link or a special file; all before anything is written.
    ``clean_leftovers`` removes temporary folders of an earlier, killed extraction of the
    same archive (only safe when no other extraction of it can be running: the download job
    holds a lock). Raises :class:`DownloadError` when the disk lacks the space to extract.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    record_path = manifest_path(archive, target)
    protected = {_clean(p).casefold() for p in protect} | {record_path.name.casefold()}
    try:
        inside = archive.resolve().relative_to(target.resolve())
        protected.add(inside.as_posix().casefold())  # never write over the archive being read
    except ValueError:
        pass
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{archive}: not a readable zip archive: {e}") from None
    result = ExtractResult(archive, target)
    with zf:
        members = zf.infolist()
        for info in members:
            problem = _zip_member_problem(info)
            if problem:
                raise DownloadError(f"{archive.name}: refusing member {info.filename!r}: {problem}")
            rel = _clean(info.filename)
            parts = rel.casefold().split("/")
            for i in range(1, len(parts) + 1):
                if "/".join(parts[:i]) in protected:
                    raise DownloadError(
                        f"{archive.name}: refusing member {info.filename!r}: it would overwrite "
                        f"{target / '/'.join(rel.split('/')[:i])}, a verified file that extraction must not touch"
                    )
        if clean_leftovers:
            for leftover in target.glob(f".{glob.escape(archive.name)}.*.extracting"):
                shutil.rmtree(leftover, ignore_errors=True)

        records = _read_record(record_path, archive.name)
        dirs: list[str] = []
        writes: list[tuple[zipfile.ZipInfo, str, bool]] = []  # (member, rel, replaces our own old file)
        adopted = False
        for info in members:
            rel = _clean(info.filename)
            blocked = _blocked(target, rel, is_dir=info.is_dir())
            if blocked:
                result.kept.append((rel, blocked))
                continue
            if info.is_dir():
                dirs.append(rel)
                continue
            decision = _decide(target / rel, info, records.get(rel))
            if decision == "same":
                if rel not in records:
                    adopted = True  # identical to the member: from now on recorded as ours
                records[rel] = {"size": info.file_size, "crc32": info.CRC}
            elif decision in ("new", "refresh"):
                writes.append((info, rel, decision == "refresh"))
            else:
                result.kept.append((rel, decision))
        # A later member of the same name wins, as with any unzip.
        writes = list({rel: (info, rel, refresh) for info, rel, refresh in writes}.values())

        if not writes:
            for rel in dirs:
                (target / rel).mkdir(parents=True, exist_ok=True)
            if adopted:
                _write_record(record_path, archive.name, records)
            return result

        needed = sum(info.file_size for info, _, _ in writes)
        free = shutil.disk_usage(target).free
        if needed > free:
            raise DownloadError(
                f"{archive.name}: extracting needs {needed / 1e6:,.1f} MB in {target} but only "
                f"{free / 1e6:,.1f} MB are free; free some space or choose another destination"
            )

        tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extracting", dir=target))
        try:
            tmp_real = os.path.realpath(tmp)
            for info, rel, _ in writes:
                out = tmp / rel
                # Belt and braces after the name checks: the resolved path must stay inside.
                if os.path.commonpath([tmp_real, os.path.realpath(out)]) != tmp_real:
                    raise DownloadError(f"{archive.name}: refusing member {info.filename!r}: escapes target")
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, _COPY_BUFFER)
            # Recorded before the first rename: after a crash, the files in place are known as ours.
            for info, rel, _ in writes:
                records[rel] = {"size": info.file_size, "crc32": info.CRC}
            _write_record(record_path, archive.name, records)
            for rel in dirs:
                (target / rel).mkdir(parents=True, exist_ok=True)
            for info, rel, refresh in writes:
                final = target / rel
                final.parent.mkdir(parents=True, exist_ok=True)
                if refresh:
                    os.replace(tmp / rel, final)
                elif not _place_new(tmp / rel, final):
                    # Something appeared there since it was checked: not ours, so kept.
                    result.kept.append((rel, "appeared during extraction"))
                    continue
                result.written.append(rel)
        except zipfile.BadZipFile as e:
            raise DownloadError(f"{archive}: corrupt zip archive: {e}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def _blocked(target: Path, rel: str, is_dir: bool) -> str | None:
    """Why ``target/rel`` cannot be written without touching something that is not ours, or None."""
    parts = rel.split("/")
    for i in range(1, len(parts) + (1 if is_dir else 0)):
        p = target.joinpath(*parts[:i])
        if p.is_symlink():
            return f"{'/'.join(parts[:i])} is a symbolic link"
        if not p.exists():
            return None
        if not p.is_dir():
            return f"a file stands where the folder {'/'.join(parts[:i])} should be"
    if is_dir:
        return None
    out = target / rel
    if out.is_symlink():
        return "a symbolic link stands there"
    if out.exists() and not out.is_file():
        return "a folder or special file stands there"
    return None


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_BUFFER):
            crc = zlib.crc32(chunk, crc)
    return crc


def _decide(out: Path, info: zipfile.ZipInfo, record: dict | None) -> str:
    """``new`` (nothing there), ``same`` (equal to the member), ``refresh`` (our own, unchanged,
    older version) or, for a file that is not ours to overwrite, the reason it is kept."""
    try:
        size = out.stat().st_size
    except FileNotFoundError:
        return "new"
    crc = None
    if size == info.file_size:
        crc = _crc32(out)
        if crc == info.CRC:
            return "same"
    if record is not None and record.get("size") == size:
        if (crc if crc is not None else _crc32(out)) == record.get("crc32"):
            return "refresh"
    return "changed since extraction" if record is not None else "not written by this extraction"


def _place_new(src: Path, final: Path) -> bool:
    """Move ``src`` to ``final`` unless something exists there (no overwrite, even in a race)."""
    try:
        os.link(src, final)  # fails if final exists: a no-clobber rename in two steps
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        if os.path.lexists(final):
            return False
        os.rename(src, final)
        return True
    os.unlink(src)
    return True


def _read_record(path: Path, archive_name: str) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); files not matching the archive are treated as not ours", path, e)
        return {}
    if not isinstance(data, dict) or data.get("format") != _MANIFEST_FORMAT or not isinstance(data.get("files"), dict):
        log.warning("%s: not an extraction record; files not matching the archive are treated as not ours", path)
        return {}
    return {rel: rec for rel, rec in data["files"].items() if isinstance(rec, dict)}


def _write_record(path: Path, archive_name: str, records: dict[str, dict]) -> None:
    data = {
        "format": _MANIFEST_FORMAT,
        "version": 1,
        "archive": archive_name,
        "note": "files written by ecgtl when extracting the archive (size, CRC-32); a rerun refreshes "
        "only these, and only while unchanged; other files are never overwritten or deleted",
        "files": dict(sorted(records.items())),
    }
    atomic_write(path, json.dumps(data, indent=0))
