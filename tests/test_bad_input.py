"""Bad input gets a clear error naming the file and the problem (built from real records)."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil

import numpy as np
import pytest
import scipy.io

from ecgtl.data.cinc2017 import Cinc2017, read_record
from ecgtl.data.icentia11k import IcentiaTorrentPatient, read_torrent_labels, read_wfdb_segment
from ecgtl.data.safe_pickle import safe_load_pickle
from ecgtl.data.wfdb_database import WfdbDatabaseRecord
from ecgtl.errors import DataError


@pytest.fixture
def cinc_copy(cinc_folder, tmp_path):
    for ext in (".hea", ".mat"):
        shutil.copy(cinc_folder / ("A00001" + ext), tmp_path / ("A00001" + ext))
    return tmp_path




def test_truncated_dat(icentia_copy):
    dat = icentia_copy / "p00" / "p00000" / "p00000_s00.dat"
    with open(dat, "r+b") as fh:
        fh.truncate(os.path.getsize(dat) // 2)
    with pytest.raises(DataError, match=r"p00000_s00\.dat: truncated signal file"):
        read_wfdb_segment(icentia_copy, 0, 0)


def test_broken_header(icentia_copy):
    (icentia_copy / "p00" / "p00000" / "p00000_s00.hea").write_text("p00000_s00 1 abc\nnonsense\n")
    with pytest.raises(DataError, match=r"p00000_s00\.hea: broken WFDB header"):
        read_wfdb_segment(icentia_copy, 0, 0)


def test_wrong_sampling_rate(icentia_copy):
    hea = icentia_copy / "p00" / "p00000" / "p00000_s00.hea"
    hea.write_text(hea.read_text().replace(" 250 ", " 360 ", 1))
    with pytest.raises(DataError, match=r"p00000_s00\.hea: sampling frequency 360 Hz, Icentia11k is 250 Hz"):
        read_wfdb_segment(icentia_copy, 0, 0)


def test_missing_annotation_file(icentia_copy):
    os.remove(icentia_copy / "p00" / "p00000" / "p00000_s00.atr")
    with pytest.raises(DataError, match=r"p00000_s00\.atr: annotation file not found"):
        read_wfdb_segment(icentia_copy, 0, 0)


def test_corrupt_annotation_file(icentia_copy):
    atr = icentia_copy / "p00" / "p00000" / "p00000_s00.atr"
    atr.write_bytes(b"\xff" * 7)
    with pytest.raises(DataError, match=r"p00000_s00\.atr"):
        read_wfdb_segment(icentia_copy, 0, 0)


def test_mat_without_signal(cinc_copy):
    scipy.io.savemat(cinc_copy / "A00001.mat", {"something_else": np.zeros(3)})
    with pytest.raises(DataError, match=r"A00001\.mat: MAT file has no signal variable 'val'"):
        read_record(cinc_copy, "A00001")


def test_mat_garbage(cinc_copy):
    (cinc_copy / "A00001.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match=r"A00001\.mat: unreadable MAT file"):
        read_record(cinc_copy, "A00001")


def test_mat_shorter_than_header(cinc_copy):
    val = scipy.io.loadmat(cinc_copy / "A00001.mat")["val"]
    scipy.io.savemat(cinc_copy / "A00001.mat", {"val": val[:, :5000]})
    with pytest.raises(DataError, match=r"A00001\.mat: signal has 5000 samples, header promises 9000"):
        read_record(cinc_copy, "A00001")


def test_nan_signal(cinc_copy):
    val = scipy.io.loadmat(cinc_copy / "A00001.mat")["val"].astype(np.float64)
    val[0, 100:110] = np.nan
    scipy.io.savemat(cinc_copy / "A00001.mat", {"val": val})
    with pytest.raises(DataError, match=r"A00001\.mat: signal has 10 non-finite"):
        read_record(cinc_copy, "A00001")


def test_flat_signal(cinc_copy):
    scipy.io.savemat(cinc_copy / "A00001.mat", {"val": np.full((1, 9000), 12, np.int16)})
    with pytest.raises(DataError, match=r"A00001\.mat: flat signal"):
        read_record(cinc_copy, "A00001")


def test_flat_wfdb_record(mirror, tmp_path):
    for ext in ("hea", "atr"):
        shutil.copy(mirror / "mitdb" / "1.0.0" / f"100.{ext}", tmp_path)
    size = os.path.getsize(mirror / "mitdb" / "1.0.0" / "100.dat")
    (tmp_path / "100.dat").write_bytes(b"\x00" * size)
    with pytest.raises(DataError, match=r"100\.dat: flat signal"):
        list(WfdbDatabaseRecord(tmp_path, "100", "mitdb").segments())


def test_bulk_cinc_read_skips_and_reports(cinc_folder, tmp_path):
    for name in ("A00001", "A00002", "A00003"):
        for ext in (".hea", ".mat"):
            shutil.copy(cinc_folder / (name + ext), tmp_path / (name + ext))
    (tmp_path / "A00002.mat").write_bytes(b"garbage")
    (tmp_path / "REFERENCE.csv").write_text("A00001,N\nA00002,N\nA00003,N\n")
    records, failures = Cinc2017(tmp_path).read_all(progress=False)
    assert [r.name for r in records] == ["A00001", "A00003"]
    assert failures[0][0] == "A00002" and "A00002.mat" in failures[0][1]


class _RunsCode:
    """Unpickling this calls os.system: exactly what a malicious 'dataset' file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_execute_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "00000_batched_lbls.pkl.gz"
    with gzip.open(path, "wb") as fh:
        pickle.dump([{"btype": [np.zeros(1, np.int32)] * 5, "rtype": _RunsCode(marker)}], fh, protocol=2)
    with pytest.raises(DataError, match=r"00000_batched_lbls\.pkl\.gz: unsafe or invalid pickle: refused global (posix|os|nt)\.system"):
        read_torrent_labels(path)
    assert not marker.exists()


def test_pickle_with_object_array_is_refused(tmp_path):
    path = tmp_path / "x.pkl"
    with open(path, "wb") as fh:
        pickle.dump(np.array([1, "a"], dtype=object), fh, protocol=2)
    with pytest.raises(DataError, match="x.pkl: unsafe or invalid pickle"):
        safe_load_pickle(path)


def test_truncated_gzip_pickle(shared_data, tmp_path):
    data = (shared_data / "icentia11k-torrent" / "00000_batched_lbls.pkl.gz").read_bytes()
    path = tmp_path / "00000_batched_lbls.pkl.gz"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=r"00000_batched_lbls\.pkl\.gz: truncated or corrupt"):
        read_torrent_labels(path)


def test_torrent_signal_of_wrong_shape(shared_data, tmp_path):
    shutil.copy(shared_data / "icentia11k-torrent" / "00000_batched_lbls.pkl.gz", tmp_path)
    with gzip.open(tmp_path / "00000_batched.pkl.gz", "wb") as fh:
        pickle.dump(np.zeros(10, np.int16), fh, protocol=2)
    with pytest.raises(DataError, match=r"00000_batched\.pkl\.gz: expected a numeric \(segments, samples\) array"):
        list(IcentiaTorrentPatient(tmp_path, 0).segments())
