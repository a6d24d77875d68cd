"""Tests of ``ecgtl.data.download`` on the real data in ``../shared/data``.

A session fixture unpacks the shared data into a PhysioNet-style mirror in a temporary folder,
and a real HTTP server on 127.0.0.1 (a small ``Range``-aware handler, since the stdlib's
SimpleHTTPRequestHandler ignores ``Range``) serves it from a background thread.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import re
import shutil
import socket
import stat
import threading
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ecgtl.data.download import (
    DATABASES,
    Database,
    add_parser,
    download,
    extract_zip,
    icentia11k_patient_files,
    parse_patients,
    parse_sha256sums,
)
from ecgtl.errors import ConfigError, DownloadError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FAST = dict(progress=False, retry_wait=0.01, timeout=10)


# --------------------------------------------------------------------------- helpers


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def read_sums(folder: Path) -> dict[str, str]:
    out = {}
    for line in (folder / "SHA256SUMS.txt").read_text().splitlines():
        if line.strip():
            digest, rel = line.split(" ", 1)
            out[rel] = digest
    return out


def link_or_copy(src: str, dst: str) -> None:
    # Hard links make a throw-away copy of a 100 MB mirror nearly free.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def assert_matches_sums(dest_folder: Path, sums: dict[str, str]) -> None:
    for rel, digest in sums.items():
        assert sha256(dest_folder / rel) == digest, rel
    assert not list(dest_folder.rglob("*.part"))


@pytest.fixture(scope="session")
def mirror(tmp_path_factory) -> Path:
    """An unpacked mirror of the shared data with the layout of https://physionet.org/files/."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found: {SHARED_DATA} (real PhysioNet data needed)")
    root = tmp_path_factory.mktemp("mirror")
    shutil.copytree(SHARED_DATA / "physionet-files", root, dirs_exist_ok=True, copy_function=link_or_copy)
    # svdb is not unpacked: no test downloads it, and it would cost 54 MB of disk and time.
    for name in ("mitdb-1.0.0.zip", "icentia11k-p00000.zip", "aftdb-1.0.0.zip"):
        with zipfile.ZipFile(SHARED_DATA / name) as zf:
            zf.extractall(root)
    for p in root.rglob("*"):  # the shared files are read-only; tests copy and corrupt some
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return root


@dataclass
class ServerState:
    root: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before hanging up
    dropped: set[str] = field(default_factory=set)
    ignore_range: bool = False

    def reset(self, root: Path) -> None:
        with self.lock:
            self.root = root
            self.requests.clear()
            self.drop_after.clear()
            self.dropped.clear()
            self.ignore_range = False

    def ranges_for(self, path: str) -> list[str | None]:
        with self.lock:
            return [r for p, r in self.requests if p == path]


def make_handler(state: ServerState) -> type[http.server.BaseHTTPRequestHandler]:
    class RangeHandler(http.server.SimpleHTTPRequestHandler):
        """GET with ``Range: bytes=N-[M]`` (206/416), plus test switches kept in ``state``."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(state.root), **kwargs)

        def log_message(self, format, *args):  # noqa: A002 - keep pytest output clean
            pass

        def do_GET(self):
            url_path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            rng = self.headers.get("Range")
            with state.lock:
                state.requests.append((url_path, rng))
                drop = None
                if url_path in state.drop_after and url_path not in state.dropped:
                    state.dropped.add(url_path)
                    drop = state.drop_after[url_path]
                ignore_range = state.ignore_range
            path = Path(self.translate_path(self.path))
            if not path.is_file():
                self.send_error(404)
                return
            size = path.stat().st_size
            start, end, code = 0, size - 1, 200
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", (rng or "").strip())
            if m and not ignore_range:
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                code = 206
            length = end - start + 1
            self.send_response(code)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            budget = length if drop is None else min(drop, length)
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    while budget > 0 and (chunk := f.read(min(1 << 20, budget))):
                        self.wfile.write(chunk)
                        budget -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True  # after a drop, the client sees a short body

    return RangeHandler


@pytest.fixture(scope="session")
def http_server(mirror):
    state = ServerState(mirror)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-mirror", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", state
    server.shutdown()
    server.server_close()


@pytest.fixture
def http_mirror(http_server, mirror):
    """(base URL, server state) with a clean request log, serving the real mirror."""
    url, state = http_server
    state.reset(mirror)
    yield url, state
    state.reset(mirror)


# --------------------------------------------------------------------------- pure functions


def test_parse_patients():
    assert parse_patients("0-3,7, 5") == [0, 1, 2, 3, 5, 7]
    assert parse_patients(4) == [4]
    assert parse_patients([2, 1, 2]) == [1, 2]
    for bad in ("", "a", "3-1", "0-11000", "1,,2"):
        with pytest.raises(ConfigError):
            parse_patients(bad)


def test_icentia_patient_layout():
    files = icentia11k_patient_files(1234)
    assert len(files) == 150
    assert files[0] == "p01/p01234/p01234_s00.hea"
    assert files[-1] == "p01/p01234/p01234_s49.atr"


def test_parse_sha256sums_formats_and_unsafe_paths():
    h = "a" * 64
    sums = parse_sha256sums([f"{h} 100.dat\n", "\n", f"{h}  sub/x.hea", f"{h} *y.atr", f"{h} SHA256SUMS.txt"])
    assert sums == {"100.dat": h, "sub/x.hea": h, "y.atr": h}
    assert parse_sha256sums([f"{h} a.dat", f"{h} b.hea"], keep=lambda r: r.endswith(".hea")) == {"b.hea": h}
    for bad in (f"{h} ../evil", f"{h} /etc/passwd", f"{h} a/../../b", "nothex 100.dat"):
        with pytest.raises(DownloadError):
            parse_sha256sums([bad])


def test_registry_matches_real_layout():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found: {SHARED_DATA}")
    for key, zip_name in [
        ("mitdb", "mitdb-1.0.0.zip"),
        ("svdb", "svdb-1.0.0.zip"),
        ("aftdb", "aftdb-1.0.0.zip"),
        ("icentia11k", "icentia11k-p00000.zip"),
    ]:
        with zipfile.ZipFile(SHARED_DATA / zip_name) as zf:
            assert f"{DATABASES[key].path}/SHA256SUMS.txt" in zf.namelist(), key
    cinc = SHARED_DATA / "physionet-files" / DATABASES["cinc2017"].path
    assert set(DATABASES["cinc2017"].files) <= set(read_sums(cinc))


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="patients"):
        download("icentia11k", tmp_path, mirror=tmp_path, **FAST)
    with pytest.raises(ConfigError):
        download("mitdb", tmp_path, mirror=tmp_path, patients="0", **FAST)
    with pytest.raises(ConfigError, match="unknown database"):
        download("nosuchdb", tmp_path, mirror=tmp_path, **FAST)
    with pytest.raises(ConfigError, match="unsupported mirror"):
        download("mitdb", tmp_path, mirror="ftp://example.org/files/", **FAST)
    with pytest.raises(DownloadError, match="mirror folder not found"):
        download("mitdb", tmp_path / "d", mirror=tmp_path / "missing", **FAST)


# --------------------------------------------------------------------------- (a) + (f) over HTTP


@pytest.fixture(scope="module")
def http_full_download(http_server, mirror, tmp_path_factory):
    """mitdb in full and Icentia11k patient 0 over loopback HTTP, once for the module.

    Correctness only; the throughput of this same transfer is measured in benchmarks/bench_data.py.
    """
    url, state = http_server
    state.reset(mirror)
    dest = tmp_path_factory.mktemp("dest-http")
    reports = [
        download(db, dest, mirror=url, patients=patients, workers=4, **FAST)
        for db, patients in (("mitdb", None), ("icentia11k", "0"))
    ]
    return dest, reports


def test_http_download_verifies_real_files(http_full_download, mirror):
    dest, (mitdb, icentia) = http_full_download
    for report, db in ((mitdb, "mitdb"), (icentia, "icentia11k")):
        assert report.ok, report.summary()
        sums = read_sums(mirror / DATABASES[db].path)
        assert len(report.downloaded) == len(sums) + 1  # + SHA256SUMS.txt itself
        assert_matches_sums(dest / DATABASES[db].path, sums)
        # Every byte that crossed the wire ended up in a file, and each file is byte-equal to the mirror's.
        assert report.bytes_downloaded == sum((dest / f.path).stat().st_size for f in report.downloaded)
        for f in report.downloaded:
            assert (dest / f.path).read_bytes() == (mirror / f.path).read_bytes(), f.path
    assert len(read_sums(mirror / "mitdb/1.0.0")) == 48 * 3 + 1  # .dat/.hea/.atr + RECORDS
    assert (dest / "mitdb/1.0.0/100.dat").stat().st_size == 1_950_000
    assert len(list((dest / "icentia11k-continuous-ecg/1.0/p00/p00000").glob("*.dat"))) == 50
    assert icentia.bytes_downloaded > 100e6


def test_second_run_skips_everything(http_full_download, http_mirror):
    dest, first = http_full_download
    url, state = http_mirror
    again = [download(db, dest, mirror=url, patients=p, **FAST) for db, p in (("mitdb", None), ("icentia11k", 0))]
    for before, after in zip(first, again, strict=True):
        assert after.ok
        assert not after.downloaded
        assert len(after.skipped) == len(before.downloaded)
        assert after.bytes_downloaded == 0
    # Verified files and the cached checksum list need no request at all.
    assert state.requests == []
    assert "0 downloaded" in again[0].summary()


# --------------------------------------------------------------------------- (b) resume


def test_interrupted_transfer_resumes_with_range(http_mirror, tmp_path, mirror):
    url, state = http_mirror
    state.drop_after["/mitdb/1.0.0/100.dat"] = 300_000
    report = download("mitdb", tmp_path, mirror=url, include=lambda r: r == "100.dat", **FAST)
    assert report.ok, report.summary()
    assert state.ranges_for("/mitdb/1.0.0/100.dat") == [None, "bytes=300000-"]
    (result,) = [f for f in report.downloaded if f.path.endswith("100.dat")]
    assert result.resumed
    target = tmp_path / "mitdb/1.0.0/100.dat"
    assert sha256(target) == read_sums(mirror / "mitdb/1.0.0")["100.dat"]
    assert not target.with_name("100.dat.part").exists()


def _seed_part(tmp_path: Path, mirror: Path, rel: str, data: bytes | None = None, n: int = 1000) -> Path:
    part = tmp_path / "mitdb/1.0.0" / (rel + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes((mirror / "mitdb/1.0.0" / rel).read_bytes()[:n] if data is None else data)
    return part


def test_existing_part_is_resumed(http_mirror, tmp_path, mirror):
    url, state = http_mirror
    _seed_part(tmp_path, mirror, "101.dat", n=12345)
    report = download("mitdb", tmp_path, mirror=url, include=lambda r: r == "101.dat", **FAST)
    assert report.ok
    assert state.ranges_for("/mitdb/1.0.0/101.dat") == ["bytes=12345-"]
    assert report.bytes_downloaded == 1_950_000 - 12345 + len((mirror / "mitdb/1.0.0/SHA256SUMS.txt").read_bytes())
    assert sha256(tmp_path / "mitdb/1.0.0/101.dat") == read_sums(mirror / "mitdb/1.0.0")["101.dat"]


def test_server_ignoring_range_restarts_from_zero(http_mirror, tmp_path, mirror):
    url, state = http_mirror
    state.ignore_range = True
    _seed_part(tmp_path, mirror, "101.dat", n=5000)
    report = download("mitdb", tmp_path, mirror=url, include=lambda r: r == "101.dat", **FAST)
    assert report.ok
    assert state.ranges_for("/mitdb/1.0.0/101.dat") == ["bytes=5000-"]  # answered 200
    assert sha256(tmp_path / "mitdb/1.0.0/101.dat") == read_sums(mirror / "mitdb/1.0.0")["101.dat"]


def test_416_on_complete_or_oversized_part(http_mirror, tmp_path, mirror):
    url, state = http_mirror
    full = (mirror / "mitdb/1.0.0/102.hea").read_bytes()
    _seed_part(tmp_path, mirror, "102.hea", n=len(full))  # complete but never renamed
    _seed_part(tmp_path, mirror, "103.hea", data=b"x" * 10_000)  # longer than the file
    report = download("mitdb", tmp_path, mirror=url, include=lambda r: r in ("102.hea", "103.hea"), **FAST)
    assert report.ok, report.summary()
    assert state.ranges_for("/mitdb/1.0.0/102.hea") == [f"bytes={len(full)}-"]
    assert state.ranges_for("/mitdb/1.0.0/103.hea") == ["bytes=10000-", None]
    assert (tmp_path / "mitdb/1.0.0/102.hea").read_bytes() == full
    assert (tmp_path / "mitdb/1.0.0/103.hea").read_bytes() == (mirror / "mitdb/1.0.0/103.hea").read_bytes()


def test_stale_part_with_wrong_bytes_is_fetched_again(http_mirror, tmp_path, mirror):
    url, state = http_mirror
    _seed_part(tmp_path, mirror, "104.dat", data=b"\0" * 4096)
    report = download("mitdb", tmp_path, mirror=url, include=lambda r: r == "104.dat", **FAST)
    assert report.ok, report.summary()
    assert state.ranges_for("/mitdb/1.0.0/104.dat") == ["bytes=4096-", None]
    assert sha256(tmp_path / "mitdb/1.0.0/104.dat") == read_sums(mirror / "mitdb/1.0.0")["104.dat"]


# --------------------------------------------------------------------------- (c) corruption


def test_corrupted_file_on_mirror_is_refused(http_mirror, tmp_path, mirror):
    url, state = http_mirror
    bad_mirror = tmp_path / "bad-mirror"
    shutil.copytree(mirror / "mitdb", bad_mirror / "mitdb", copy_function=link_or_copy)
    victim = bad_mirror / "mitdb/1.0.0/101.dat"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.unlink()  # break the hard link before writing, so the shared mirror stays intact
    victim.write_bytes(bytes(data))
    state.reset(bad_mirror)

    dest = tmp_path / "dest"
    keep = ("100.", "101.", "102.")
    report = download("mitdb", dest, mirror=url, include=lambda r: r.startswith(keep), **FAST)
    (failure,) = report.failed
    expected = read_sums(mirror / "mitdb/1.0.0")["101.dat"]
    assert failure.path == "mitdb/1.0.0/101.dat"
    assert "101.dat" in failure.error and expected in failure.error
    assert hashlib.sha256(bytes(data)).hexdigest() in failure.error
    assert not (dest / "mitdb/1.0.0/101.dat").exists()
    assert not (dest / "mitdb/1.0.0/101.dat.part").exists()
    assert len(report.downloaded) == 1 + 8  # checksums + the 8 other files
    for name in ("100.dat", "100.hea", "102.atr", "101.hea"):
        assert (dest / "mitdb/1.0.0" / name).is_file()
    assert "FAILED mitdb/1.0.0/101.dat" in report.summary()
    with pytest.raises(DownloadError, match="101.dat"):
        report.raise_for_failures()


def test_missing_file_and_dead_server(http_mirror, tmp_path):
    url, _ = http_mirror
    fake = tmp_path / "m/fake/1.0"
    fake.mkdir(parents=True)
    (fake / "here.txt").write_text("hello")
    (fake / "SHA256SUMS.txt").write_text(f"{hashlib.sha256(b'hello').hexdigest()} here.txt\n{'0' * 64} gone.txt\n")
    # The HTTP server serves the real mirror, so point it at this one for the test.
    _, state = http_mirror
    state.reset(tmp_path / "m")
    report = download(Database("fake", "fake/1.0", "test"), tmp_path / "d", mirror=url, **FAST)
    assert [f.path for f in report.failed] == ["fake/1.0/gone.txt"]
    assert "HTTP 404" in report.failed[0].error
    assert (tmp_path / "d/fake/1.0/here.txt").read_text() == "hello"

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="SHA256SUMS.txt.*giving up after 2 attempts"):
        download("mitdb", tmp_path / "d2", mirror=f"http://127.0.0.1:{port}/", retries=1, **FAST)


def test_icentia_patient_absent_from_sums_is_an_error(tmp_path, mirror):
    report = download(
        "icentia11k", tmp_path, mirror=mirror, patients="0,1", include=lambda r: r.endswith("_s00.hea"), **FAST
    )
    assert [(f.path, f.error) for f in report.failed] == [
        ("icentia11k-continuous-ecg/1.0/p00/p00001/", "patient 1 not listed in SHA256SUMS.txt")
    ]
    assert (tmp_path / "icentia11k-continuous-ecg/1.0/p00/p00000/p00000_s00.hea").is_file()
    assert not report.ok


# --------------------------------------------------------------------------- (d) zip-slip


def _evil_zip(path: Path, member: str, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("good/ok.txt", "fine")  # a good member first: must not be written either
        info = zipfile.ZipInfo(member)
        if symlink:
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../outside" if symlink else "pwned")
    return path


@pytest.mark.parametrize(
    "member, symlink",
    [("../evil.txt", False), ("a/../../evil.txt", False), ("/tmp/evil-abs.txt", False), ("link", True)],
)
def test_zip_slip_is_refused(tmp_path, member, symlink):
    archive = _evil_zip(tmp_path / "evil.zip", member, symlink)
    target = tmp_path / "target"
    with pytest.raises(DownloadError, match=re.escape(member)):
        extract_zip(archive, target)
    assert list(target.iterdir()) == []  # no member, no leftover temp folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip", "target"]
    assert not Path("/tmp/evil-abs.txt").exists()


def test_zip_slip_through_download(tmp_path):
    db_dir = tmp_path / "m/evil/1.0"
    db_dir.mkdir(parents=True)
    archive = _evil_zip(db_dir / "data.zip", "../evil.txt")
    (db_dir / "SHA256SUMS.txt").write_text(f"{sha256(archive)} data.zip\n")
    db = Database("evil", "evil/1.0", "zip-slip test", extract=("data.zip",))
    report = download(db, tmp_path / "dest", mirror=f"file://{tmp_path / 'm'}", **FAST)
    (failure,) = report.failed
    assert failure.path == "evil/1.0/data.zip" and "../evil.txt" in failure.error
    assert sorted(p.name for p in (tmp_path / "dest/evil/1.0").iterdir()) == ["SHA256SUMS.txt", "data.zip"]
    assert not (tmp_path / "dest/evil/evil.txt").exists()


def test_zip_extraction_completes_a_partial_tree_and_keeps_files_it_did_not_write(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("top/x.txt", "x")
        zf.writestr("top/sub/y.txt", "yy")
    target = tmp_path / "t"
    (target / "top").mkdir(parents=True)
    (target / "top/x.txt").write_text("old and wrong size")  # not written by extraction: the user's, kept
    assert extract_zip(archive, target) is True
    assert (target / "top/sub/y.txt").read_text() == "yy"
    assert (target / "top/x.txt").read_text() == "old and wrong size"
    assert extract_zip(archive, target) is False  # already there
    assert sorted(p.name for p in target.iterdir()) == ["a.zip.extracted.json", "top"]


# --------------------------------------------------------------------------- (e) local mirror


def test_local_mirror_cinc2017_extracts_training_set(tmp_path, mirror):
    report = download("cinc2017", tmp_path, mirror=mirror, **FAST)
    assert report.ok, report.summary()
    assert report.extracted == ["challenge-2017/1.0.0/training2017.zip"]
    folder = tmp_path / "challenge-2017/1.0.0"
    assert_matches_sums(folder, read_sums(mirror / "challenge-2017/1.0.0"))
    assert len(list((folder / "training2017").glob("*.mat"))) == 7248
    assert len(list((folder / "training2017").glob("*.hea"))) == 7248
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp folder left
    again = download("cinc2017", tmp_path, mirror=mirror, **FAST)
    assert again.ok and not again.downloaded and not again.extracted
    assert len(again.skipped) == 3


def test_file_url_mirror(tmp_path, mirror):
    report = download("cinc2017", tmp_path, mirror=mirror.as_uri(), include=lambda r: r == "REFERENCE-v3.csv", **FAST)
    assert report.ok, report.summary()
    assert [f.path for f in report.downloaded] == [
        "challenge-2017/1.0.0/SHA256SUMS.txt",
        "challenge-2017/1.0.0/REFERENCE-v3.csv",
    ]
    assert (tmp_path / "challenge-2017/1.0.0/REFERENCE-v3.csv").read_text().startswith("A00001,")


# --------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ecgtl")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_exit_codes(tmp_path, mirror, capsys):
    assert (
        _cli(
            [
                "download",
                "aftdb",
                "--dest",
                str(tmp_path / "ok"),
                "--mirror",
                str(mirror),
                "--no-progress",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "aftdb" in out and "0 failed" in out
    assert (tmp_path / "ok/aftdb/1.0.0/learning-set/n01.dat").is_file()

    bad = tmp_path / "bad"
    shutil.copytree(mirror / "aftdb", bad / "aftdb", copy_function=shutil.copy2)
    (bad / "aftdb/1.0.0/learning-set/n01.dat").write_bytes(b"corrupt")
    assert _cli(["download", "aftdb", "--dest", str(tmp_path / "bad-dest"), "--mirror", str(bad), "--no-progress"]) == 1
    assert "FAILED aftdb/1.0.0/learning-set/n01.dat" in capsys.readouterr().out

    assert _cli(["download", "mitdb", "--patients", "0-9", "--mirror", str(mirror), "--no-progress"]) == 2
