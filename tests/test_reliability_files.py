"""Reliability of what ecgtl writes to disk: user files, concurrent writers, unbounded work.

Each test injects one fault into the real code path, on small real data (a CinC 2017 mirror
built from a dozen real records of the shared ``training2017.zip``, real AF Termination
records), and fails if the promise breaks. HTTP faults come from a server on 127.0.0.1 that
stops every response within seconds whatever happens.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ecgtl.cli import main as cli
from ecgtl.data.download import Database, download, parse_patients
from ecgtl.errors import ConfigError, DataError, DownloadError

SRC = str(Path(__file__).resolve().parents[1] / "src")
CINC = "challenge-2017/1.0.0"
FAST = dict(progress=False, retry_wait=0.01, timeout=10)
N_RECORDS = 12


# --------------------------------------------------------------------------- real data, small


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_sums(folder: Path) -> None:
    lines = [f"{_sha256(p)} {p.relative_to(folder).as_posix()}" for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != "SHA256SUMS.txt"]
    (folder / "SHA256SUMS.txt").write_text("\n".join(lines) + "\n")


def build_cinc_mirror(root: Path, shared: Path, extra: dict[str, bytes] | None = None) -> Path:
    """``root/challenge-2017/1.0.0/`` with a training2017.zip of the first real records (their
    .hea/.mat, RECORDS and REFERENCE.csv, byte for byte), the real REFERENCE-v3.csv and the sums."""
    base = root / CINC
    base.mkdir(parents=True)
    src = shared / "physionet-files" / CINC
    with zipfile.ZipFile(src / "training2017.zip") as zin, \
            zipfile.ZipFile(base / "training2017.zip", "w", zipfile.ZIP_DEFLATED) as zout:
        names = zin.read("training2017/RECORDS").decode().split()[:N_RECORDS]
        for name in names:
            for ext in (".hea", ".mat"):
                zout.writestr(f"training2017/{name}{ext}", zin.read(f"training2017/{name}{ext}"))
        zout.writestr("training2017/RECORDS", "\n".join(names) + "\n")
        ref = [r for r in zin.read("training2017/REFERENCE.csv").decode().split() if r.split(",")[0] in names]
        zout.writestr("training2017/REFERENCE.csv", "\n".join(ref) + "\n")
        for member, data in (extra or {}).items():
            zout.writestr(member, data)
    shutil.copy(src / "REFERENCE-v3.csv", base / "REFERENCE-v3.csv")
    _write_sums(base)
    return root


@pytest.fixture(scope="module")
def cinc_mirror(shared_data, tmp_path_factory) -> Path:
    return build_cinc_mirror(tmp_path_factory.mktemp("cinc-mirror"), shared_data)


@pytest.fixture(scope="module")
def aftdb_folder(shared_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aftdb")
    with zipfile.ZipFile(shared_data / "aftdb-1.0.0.zip") as zf:
        zf.extractall(root)
    return root / "aftdb" / "1.0.0"


def fetch_cinc(dest: Path, mirror, **kwargs):
    return download("cinc2017", dest, mirror=mirror, **{**FAST, **kwargs})


def tree(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder``: (mtime_ns, sha256); what a rewrite or a deletion changes."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, _sha256(p))
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def downloaded(cinc_mirror, tmp_path) -> Path:
    """A fresh, complete CinC download (dest root) from the small mirror."""
    report = fetch_cinc(tmp_path / "raw", cinc_mirror)
    assert report.ok and report.extracted == [f"{CINC}/training2017.zip"], report.summary()
    return tmp_path / "raw"


# --------------------------------------------------------------------------- 1. download never destroys user files


def test_download_rerun_keeps_a_file_the_user_added(downloaded, cinc_mirror):
    folder = downloaded / CINC / "training2017"
    (folder / "my_labels.csv").write_text("A00001,A\n")  # the user's own file among the extracted ones
    (folder.parent / "notes.txt").write_text("mine")
    (folder / "RECORDS").unlink()  # and one extracted file deleted: it is restored, nothing else rewritten
    before = tree(folder)
    report = fetch_cinc(downloaded, cinc_mirror)
    assert report.ok and report.kept == [], report.summary()
    assert (folder / "my_labels.csv").read_text() == "A00001,A\n"
    assert (folder.parent / "notes.txt").read_text() == "mine"
    after = tree(folder)
    assert (folder / "RECORDS").read_text().split()[0] == "A00001"  # restored
    del after["RECORDS"]
    assert after == before  # every other file untouched: not deleted, not rewritten


def test_download_rerun_keeps_an_edited_extracted_file_and_says_so(downloaded, cinc_mirror, capsys):
    folder = downloaded / CINC / "training2017"
    edited = "A00001\nA00002\n"
    (folder / "RECORDS").write_text(edited)
    (folder / "A00003.hea").write_text("my own header\n")
    rc = cli(["download", "cinc2017", "--dest", str(downloaded), "--mirror", str(cinc_mirror), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert (folder / "RECORDS").read_text() == edited
    assert (folder / "A00003.hea").read_text() == "my own header\n"
    assert "kept 2 file(s) you changed" in out
    assert f"{CINC}/training2017/RECORDS (changed since extraction)" in out
    # and again: still kept, still said, nothing rewritten
    before = tree(folder)
    report = fetch_cinc(downloaded, cinc_mirror)
    assert sorted(p for p, _ in report.kept) == [f"{CINC}/training2017/A00003.hea", f"{CINC}/training2017/RECORDS"]
    assert not report.extracted and tree(folder) == before


def test_extraction_over_a_tree_it_did_not_write_keeps_the_users_files(cinc_mirror, tmp_path):
    """No extraction record (e.g. unzipped by hand): equal files are adopted, differing ones kept."""
    base = tmp_path / "raw" / CINC
    (base / "training2017").mkdir(parents=True)
    with zipfile.ZipFile(cinc_mirror / CINC / "training2017.zip") as zf:
        zf.extract("training2017/A00001.mat", base)  # identical to the member: no conflict
    (base / "training2017" / "A00002.mat").write_bytes(b"a different file")
    report = fetch_cinc(tmp_path / "raw", cinc_mirror)
    assert report.kept == [(f"{CINC}/training2017/A00002.mat", "not written by this extraction")]
    assert (base / "training2017" / "A00002.mat").read_bytes() == b"a different file"
    assert len(list((base / "training2017").glob("*.hea"))) == N_RECORDS


@pytest.mark.parametrize("member", ["REFERENCE-v3.csv", "reference-V3.CSV", "SHA256SUMS.txt",
                                    "training2017.zip.extracted.json", "REFERENCE-v3.csv/inside.txt"])
def test_zip_member_landing_on_a_verified_file_is_refused(shared_data, tmp_path, member):
    mirror = build_cinc_mirror(tmp_path / "m", shared_data, extra={member: b"pwned"})
    report = fetch_cinc(tmp_path / "raw", mirror)
    (failure,) = report.failed
    assert failure.path == f"{CINC}/training2017.zip"
    assert repr(member) in failure.error and "verified file" in failure.error
    base = tmp_path / "raw" / CINC
    assert _sha256(base / "REFERENCE-v3.csv") == _sha256(mirror / CINC / "REFERENCE-v3.csv")
    assert not (base / "training2017").exists()  # refused before anything was written


def test_downloaded_file_changed_by_the_user_is_set_aside_not_overwritten(downloaded, cinc_mirror):
    ref = downloaded / CINC / "REFERENCE-v3.csv"
    ref.write_text("A00001,N\n")  # the user's edit of a verified download
    report = fetch_cinc(downloaded, cinc_mirror)
    assert report.ok, report.summary()
    assert _sha256(ref) == _sha256(cinc_mirror / CINC / "REFERENCE-v3.csv")  # the verified file is back
    assert (ref.parent / "REFERENCE-v3.csv.changed").read_text() == "A00001,N\n"  # and the edit kept
    assert "your copy is kept as REFERENCE-v3.csv.changed" in report.summary()
    ref.write_text("second edit\n")
    fetch_cinc(downloaded, cinc_mirror)
    assert (ref.parent / "REFERENCE-v3.csv.changed").read_text() == "A00001,N\n"  # never clobbered
    assert (ref.parent / "REFERENCE-v3.csv.changed-2").read_text() == "second edit\n"


def test_interrupted_extraction_is_completed_and_user_files_still_kept(cinc_mirror, tmp_path, monkeypatch):
    import ecgtl.data.download.extract as extract

    base = tmp_path / "raw" / CINC
    (base / "training2017").mkdir(parents=True)
    (base / "training2017" / "RECORDS").write_text("mine\n")  # the user's, there before
    real_place, placed = extract._place_new, []

    def place_then_die(src, final):  # Ctrl-C after 5 files were renamed into place
        if len(placed) == 5:
            raise KeyboardInterrupt
        placed.append(final)
        return real_place(src, final)

    monkeypatch.setattr(extract, "_place_new", place_then_die)
    with pytest.raises(KeyboardInterrupt):
        fetch_cinc(tmp_path / "raw", cinc_mirror)
    assert len(list((base / "training2017").iterdir())) == 1 + 5
    stale = base / ".training2017.zip.dead.extracting"  # what a SIGKILL would leave
    stale.mkdir()
    monkeypatch.setattr(extract, "_place_new", real_place)
    report = fetch_cinc(tmp_path / "raw", cinc_mirror)
    # the 5 files of the interrupted run are known as extraction's own (not reported as the user's)
    assert report.kept == [(f"{CINC}/training2017/RECORDS", "not written by this extraction")]
    assert (base / "training2017" / "RECORDS").read_text() == "mine\n"
    assert len(list((base / "training2017").glob("*.mat"))) == N_RECORDS
    assert not [p for p in base.iterdir() if p.name.endswith(".extracting")]


def test_symbolic_links_in_the_extracted_tree_are_not_written_through(downloaded, cinc_mirror, tmp_path):
    folder = downloaded / CINC / "training2017"
    outside = tmp_path / "outside.txt"
    outside.write_text("not ecgtl's")
    (folder / "RECORDS").unlink()
    (folder / "RECORDS").symlink_to(outside)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "A00004.mat").unlink()
    shutil.move(folder / "A00005.hea", elsewhere / "kept.hea")
    report = fetch_cinc(downloaded, cinc_mirror)
    assert (f"{CINC}/training2017/RECORDS", "a symbolic link stands there") in report.kept
    assert outside.read_text() == "not ecgtl's"
    assert (folder / "A00004.mat").is_file() and (folder / "A00005.hea").is_file()  # restored alongside
    # a whole folder replaced by a link to somewhere else: nothing is written there
    shutil.rmtree(folder)
    folder.symlink_to(elsewhere, target_is_directory=True)
    report = fetch_cinc(downloaded, cinc_mirror)
    assert len(report.kept) == 2 * N_RECORDS + 2 and all("symbolic link" in why for _, why in report.kept)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["kept.hea"]


def test_extraction_without_disk_space_refuses_before_writing(downloaded, cinc_mirror, monkeypatch):
    shutil.rmtree(downloaded / CINC / "training2017")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10_000))  # a nearly full disk
    report = fetch_cinc(downloaded, cinc_mirror)
    (failure,) = report.failed
    assert failure.path == f"{CINC}/training2017.zip"
    assert "extracting needs" in failure.error and "only 0.0 MB are free" in failure.error
    assert not (downloaded / CINC / "training2017").exists()
    assert not [p for p in (downloaded / CINC).iterdir() if p.name.endswith(".extracting")]


# --------------------------------------------------------------------------- HTTP server with faults


@dataclass
class Faults:
    root: Path
    modes: dict[str, str] = field(default_factory=dict)  # path -> trickle | trickle-headers | slow | gate
    gate: threading.Event = field(default_factory=threading.Event)
    requests: list[str] = field(default_factory=list)


def _handler(faults: Faults):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
            faults.requests.append(rel)
            path = faults.root / rel
            if not path.is_file():
                self.send_error(404)
                return
            data, mode = path.read_bytes(), faults.modes.get(rel)
            deadline = time.monotonic() + 15  # a test server never hangs a test
            try:
                if mode == "trickle-headers":
                    # 20 s of headers at this pace: longer than any limit the tests allow
                    head = f"HTTP/1.1 200 OK\r\nX-Pad: {'.' * 400}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                    for i in range(len(head)):
                        if time.monotonic() > deadline:
                            return
                        self.wfile.write(head[i:i + 1])
                        time.sleep(0.05)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if mode == "gate":
                    faults.gate.wait(15)
                step, pause = {"trickle": (1, 0.05), "slow": (100, 0.05)}.get(mode, (len(data), 0))
                for i in range(0, len(data), step):
                    if time.monotonic() > deadline:
                        return
                    self.wfile.write(data[i:i + step])
                    time.sleep(pause)
            except OSError:  # the client hung up
                pass
            self.close_connection = True

    return Handler


@pytest.fixture(scope="module")
def fault_server(cinc_mirror):
    faults = Faults(cinc_mirror)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(faults))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", faults
    faults.gate.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def faulty(fault_server, cinc_mirror):
    url, faults = fault_server
    faults.root, faults.modes, faults.requests = cinc_mirror, {}, []
    faults.gate.clear()
    yield url, faults
    faults.gate.set()


# --------------------------------------------------------------------------- 3. unbounded work: stalled transfers


def test_trickling_body_is_aborted_with_the_url_named(faulty, tmp_path):
    url, faults = faulty
    faults.modes[f"{CINC}/REFERENCE-v3.csv"] = "trickle"  # one byte every 50 ms: no read ever times out
    t0 = time.perf_counter()
    report = fetch_cinc(tmp_path, url, retries=1, timeout=10, min_speed=200, stall_seconds=0.5)
    elapsed = time.perf_counter() - t0
    (failure,) = report.failed
    assert failure.path == f"{CINC}/REFERENCE-v3.csv"
    assert "transfer stalled" in failure.error and f"{url}{CINC}/REFERENCE-v3.csv" in failure.error
    assert "giving up after 2 attempts" in failure.error
    assert elapsed < 6, elapsed  # 2 attempts x 0.5 s, far below the 10 s socket timeout
    assert (tmp_path / CINC / "training2017" / "A00001.mat").is_file()  # the other files went on


def test_trickling_response_headers_are_aborted(faulty, tmp_path):
    url, faults = faulty
    faults.modes[f"{CINC}/SHA256SUMS.txt"] = "trickle-headers"
    t0 = time.perf_counter()
    with pytest.raises(DownloadError, match=rf"transfer stalled.*{url}{CINC}/SHA256SUMS\.txt"):
        fetch_cinc(tmp_path, url, retries=0, timeout=10, min_speed=200, stall_seconds=0.5)
    assert time.perf_counter() - t0 < 5


def test_slow_but_steady_transfer_is_not_aborted(faulty, tmp_path):
    """The other side of the limit: 2 kB/s in 100-byte pieces, above a 500 B/s minimum, completes."""
    url, faults = faulty
    extra = faults.root / "slow/1.0"
    extra.mkdir(parents=True, exist_ok=True)
    (extra / "data.bin").write_bytes(os.urandom(2500))
    _write_sums(extra)
    faults.modes["slow/1.0/data.bin"] = "slow"
    report = download(Database("slow", "slow/1.0", "test"), tmp_path, mirror=url, **{**FAST, "retries": 0},
                      min_speed=500, stall_seconds=0.3)
    assert report.ok, report.summary()
    assert (tmp_path / "slow/1.0/data.bin").read_bytes() == (extra / "data.bin").read_bytes()


# --------------------------------------------------------------------------- 3. unbounded work: patient ranges


def test_huge_patient_range_is_refused_before_it_is_expanded(cinc_mirror, capsys):
    tracemalloc.start()
    t0 = time.perf_counter()
    for spec in ("0-99999999", "99999999", "5,0-99999999", "0-99999", "0-" + "9" * 5000, range(10**12)):
        with pytest.raises(ConfigError, match="out of range: the database has 11,000 patients, numbered 0-10999"):
            parse_patients(spec)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000 and time.perf_counter() - t0 < 2, (peak, time.perf_counter() - t0)
    with pytest.raises(ConfigError, match="the database has 5 patients"):
        parse_patients("0-9", count=5)
    assert parse_patients("0-10999")[-1] == 10999
    # through the commands: a clear error, exit 2, before any download or file is touched
    assert cli(["download", "icentia11k", "--patients", "0-99999999", "--dest", "/nonexistent/x",
                "--mirror", str(cinc_mirror), "--no-progress"]) == 2
    assert "out of range" in capsys.readouterr().err
    from ecgtl.data.prepare import build_jobs

    with pytest.raises(ConfigError, match="out of range"):
        build_jobs(icentia=str(cinc_mirror), patients="0-99999999")


# --------------------------------------------------------------------------- 3. read/write errors


def _unwritable_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder
    (folder / "probe").unlink()  # root ignores permissions: use a file system that refuses new folders instead
    if Path("/sys").is_dir() and _mkdir_fails(Path("/sys/ecgtl-test")):
        return Path("/sys")
    pytest.skip("no read-only folder available here")


def _mkdir_fails(path: Path) -> bool:
    try:
        path.mkdir()
    except OSError:
        return True
    path.rmdir()
    return False


def test_download_dest_that_is_a_file_or_read_only_is_a_clear_error(cinc_mirror, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    read_only = _unwritable_folder(tmp_path)
    for dest, where, why in [(a_file, a_file, "is a file, not a folder"),
                             (a_file / "below", a_file, "is a file, not a folder"),
                             (read_only / "raw", read_only, "cannot write the download here")]:
        rc = cli(["download", "cinc2017", "--dest", str(dest), "--mirror", str(cinc_mirror), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 1, err
        assert f"{where}" in err and why in err and "--dest" in err and "Traceback" not in err
    assert a_file.read_text() == "x"


def test_prepare_out_that_is_a_file_or_read_only_is_a_clear_error(aftdb_folder, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    read_only = _unwritable_folder(tmp_path)
    for out, why in [(a_file, "is a file, not a folder"), (read_only / "store", "cannot write the store here")]:
        rc = cli(["prepare", "--out", str(out), "--database", f"aftdb={aftdb_folder}", "--workers", "1", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and why in err and "--out" in err and "Traceback" not in err, err


# --------------------------------------------------------------------------- 2. concurrent writers


def test_second_download_into_the_same_folder_is_refused(faulty, tmp_path):
    url, faults = faulty
    faults.modes[f"{CINC}/training2017.zip"] = "gate"  # the first download waits mid-transfer
    first: dict = {}
    thread = threading.Thread(target=lambda: first.setdefault("report", fetch_cinc(tmp_path, url)))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while f"{CINC}/training2017.zip" not in faults.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(DownloadError, match=rf"another `ecgtl download` is writing to .*{CINC} \(pid {os.getpid()}\); "
                                                r"wait for it to finish or use another --dest"):
            fetch_cinc(tmp_path, url)
    finally:
        faults.gate.set()
        thread.join(30)
    assert first["report"].ok, first["report"].summary()
    again = fetch_cinc(tmp_path, url)  # the lock is free again
    assert again.ok and not again.downloaded


_GATED_PREPARE = """
import os, sys, time
sys.path.insert(0, {src!r})
from ecgtl.data.store import prepare
from ecgtl.data.wfdb_database import database_records

class Gated:
    def __init__(self, factory):
        self.factory = factory
    def __call__(self):
        while not os.path.exists({gate!r}):
            time.sleep(0.02)
        return self.factory()

jobs = database_records({db!r}, "aftdb")[:6]
prepare({out!r}, [(pid, Gated(f)) for pid, f in jobs], workers=1, progress=False)
"""


def _start_gated_prepare(aftdb_folder: Path, store: Path, gate: Path) -> subprocess.Popen:
    script = _GATED_PREPARE.format(src=SRC, gate=str(gate), db=str(aftdb_folder), out=str(store))
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    lock = store / ".prepare.lock"
    while time.monotonic() < deadline and proc.poll() is None:
        if lock.is_file() and lock.read_text().strip() == str(proc.pid):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the first prepare never took the store's lock")


def _manifest_matches_disk(store: Path) -> set[str]:
    listed = {p["patient_id"] for p in json.loads((store / "manifest.json").read_text())["patients"]}
    on_disk = {f"{p.parent.parent.name}/{p.parent.name}" for p in (store / "patients").glob("*/*/meta.json")}
    assert listed == on_disk
    return listed


def test_second_prepare_into_the_same_store_is_refused_and_the_manifest_is_complete(aftdb_folder, tmp_path, capsys):
    store, gate = tmp_path / "store", tmp_path / "gate"
    first = _start_gated_prepare(aftdb_folder, store, gate)
    try:
        rc = cli(["prepare", "--out", str(store), "--database", f"aftdb={aftdb_folder}", "--workers", "1", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2, err  # not 0: the second writer does not pretend it prepared anything
        assert f"{store}: another `ecgtl prepare` is writing to this store (pid {first.pid}); " \
               "wait for it to finish or use another --out" in err
    finally:
        gate.touch()
        assert first.wait(60) == 0
    assert len(_manifest_matches_disk(store)) == 6
    from ecgtl.data.store import prepare
    from ecgtl.data.wfdb_database import database_records

    report = prepare(store, database_records(aftdb_folder, "aftdb")[:9], progress=False)  # now it may go on
    assert len(report.skipped) == 6 and len(report.prepared) == 3
    assert len(_manifest_matches_disk(store)) == 9


def test_lock_of_a_killed_prepare_does_not_block_the_next(aftdb_folder, tmp_path):
    store, gate = tmp_path / "store", tmp_path / "gate"
    first = _start_gated_prepare(aftdb_folder, store, gate)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert (store / ".prepare.lock").read_text().strip() == str(first.pid)  # the stale pid is still written
    from ecgtl.data.store import prepare
    from ecgtl.data.wfdb_database import database_records

    report = prepare(store, database_records(aftdb_folder, "aftdb")[:3], progress=False)
    assert len(report.prepared) == 3 and not report.failures
    assert len(_manifest_matches_disk(store)) == 3


# --------------------------------------------------------------------------- 2. evaluate outputs


@pytest.fixture(scope="module")
def untrained_card(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    from ecgtl.constants import CINC_CLASSES
    from ecgtl.models import create_model
    from ecgtl.models.card import write_card

    run = tmp_path_factory.mktemp("run")
    model = create_model("resnet18v2", num_classes=4, width=0.125)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "best.safetensors"))
    write_card(run / "model.json", run / "best.safetensors", architecture="resnet18v2", width=0.125, num_classes=4,
               classes=list(CINC_CLASSES), fs=100, normalization={"mean": 0.0, "std": 0.2}, task="cinc2017",
               input="crop", window_samples=2048, hop_samples=1024)
    return run


def _cinc_subset(shared_data: Path, folder: Path, start: int, n: int = 6) -> Path:
    """A folder in the CinC layout with ``n`` real records from ``start``, named like any other."""
    folder.mkdir(parents=True)
    with zipfile.ZipFile(shared_data / "physionet-files" / CINC / "training2017.zip") as zf:
        names = zf.read("training2017/RECORDS").decode().split()[start:start + n]
        labels = dict(r.split(",") for r in zf.read("training2017/REFERENCE.csv").decode().split())
        for name in names:
            for ext in (".hea", ".mat"):
                (folder / (name + ext)).write_bytes(zf.read(f"training2017/{name}{ext}"))
    (folder / "RECORDS").write_text("\n".join(names) + "\n")
    (folder / "REFERENCE.csv").write_text("".join(f"{n},{labels[n]}\n" for n in names))
    return folder


def test_evaluations_of_same_named_folders_get_separate_reports(untrained_card, shared_data, tmp_path):
    from ecgtl.evaluate.commands import run_evaluate

    a = _cinc_subset(shared_data, tmp_path / "site-a" / "test", 0)
    b = _cinc_subset(shared_data, tmp_path / "site-b" / "test", 100, n=4)
    run_evaluate(str(untrained_card), str(a), n_boot=0, progress=False)
    run_evaluate(str(untrained_card), str(b), n_boot=0, progress=False)
    outs = sorted(untrained_card.glob("evaluate-test-*"))
    assert len(outs) == 2
    reports = {json.loads((o / "report.json").read_text())["data"]: o for o in outs}
    assert set(reports) == {str(a.resolve()), str(b.resolve())}
    assert json.loads((reports[str(a.resolve())] / "report.json").read_text())["n"] == 6
    assert json.loads((reports[str(b.resolve())] / "report.json").read_text())["n"] == 4
    before = tree(reports[str(b.resolve())])
    run_evaluate(str(untrained_card), str(a), n_boot=0, progress=False)  # the same evaluation again: refreshed
    assert tree(reports[str(b.resolve())]) == before


def test_evaluate_refuses_an_out_folder_holding_another_evaluation(untrained_card, shared_data, tmp_path):
    from ecgtl.evaluate.commands import run_evaluate

    a = _cinc_subset(shared_data, tmp_path / "a", 0)
    b = _cinc_subset(shared_data, tmp_path / "b", 100, n=4)
    out = tmp_path / "eval"
    run_evaluate(str(untrained_card), str(a), out=str(out), n_boot=0, progress=False)
    before = tree(out)
    with pytest.raises(ConfigError, match=rf"{out}: already holds the report of another evaluation of {a.resolve()}"):
        run_evaluate(str(untrained_card), str(b), out=str(out), n_boot=0, progress=False)
    assert tree(out) == before
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        run_evaluate(str(untrained_card), str(a), out=str(tmp_path / "a-file"), n_boot=0, progress=False)


_EVALUATE_WITH_FILE_LIMIT = """
import resource, signal, sys
sys.path.insert(0, {src!r})
from ecgtl.evaluate.commands import run_evaluate
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writing past the limit then fails with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
run_evaluate({card!r}, {data!r}, out={out!r}, n_boot=0, progress=False)
"""


def test_evaluate_write_failing_midway_leaves_the_previous_report_whole(untrained_card, shared_data, tmp_path):
    from ecgtl.evaluate.commands import run_evaluate

    data = _cinc_subset(shared_data, tmp_path / "data", 0)
    out = tmp_path / "eval"
    run_evaluate(str(untrained_card), str(data), out=str(out), n_boot=0, progress=False)
    before = {name: (out / name).read_bytes() for name in ("report.json", "predictions.csv")}
    # predictions.csv (the same bytes again) fits, report.json does not: its write fails part way
    limit = len(before["predictions.csv"]) + 64
    assert len(before["report.json"]) > limit + 256
    script = _EVALUATE_WITH_FILE_LIMIT.format(src=SRC, limit=limit, card=str(untrained_card), data=str(data), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode != 0 and "File too large" in proc.stderr, proc.stderr[-2000:]
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == [".evaluate.lock", "predictions.csv", "report.json"]
