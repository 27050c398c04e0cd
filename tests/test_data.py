"""Tests for deltaprop.io.datasets: every format's round trip and every validation error."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from deltaprop.errors import DataError
from deltaprop.io.datasets import Dataset, is_memory_mapped, load_dataset, prefetch_rows
from deltaprop.training.targets import (
    as_labels,
    as_targets,
    validate_labels_for_classification,
)

FASHION = Path(os.environ.get("DELTAPROP_FASHION_MNIST") or "/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never touch the user's ~/.cache from tests."""
    monkeypatch.setenv("DELTAPROP_CACHE_DIR", str(tmp_path / "cache"))


def write_idx(path: Path, arr: np.ndarray, *, gz: bool, code: int = 0x08) -> Path:
    """Write `arr` as an IDX file (big-endian), gzipped or raw."""
    be = {0x08: "u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    data = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data += np.asarray(arr, dtype=be).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)
    return path


def idx_pair(tmp_path: Path, n: int = 5, gz: bool = True) -> tuple[Path, np.ndarray, np.ndarray]:
    ext = ".gz" if gz else ""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(n, 3, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    img_path = write_idx(tmp_path / f"toy-images-idx3-ubyte{ext}", imgs, gz=gz)
    write_idx(tmp_path / f"toy-labels-idx1-ubyte{ext}", labels, gz=gz)
    return img_path, imgs, labels


def raises(match: str):
    return pytest.raises(DataError, match=match)


# -- Fashion-MNIST ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fashion_train(tmp_path_factory):
    assert (FASHION / "train-images-idx3-ubyte.gz").exists(), "make test installs dataset-fashion-mnist"
    mp = pytest.MonkeyPatch()
    mp.setenv("DELTAPROP_CACHE_DIR", str(tmp_path_factory.mktemp("fm-cache")))
    try:
        yield load_dataset("fashion-mnist:train"), load_dataset("fashion-mnist:train")  # 2nd: cached
    finally:
        mp.undo()


def test_fashion_mnist_train(fashion_train):
    for ds in fashion_train:
        assert isinstance(ds, Dataset) and ds.source == "fashion-mnist:train"
        assert ds.X.shape == (60000, 784) and ds.X.dtype == np.uint8
        assert ds.y.shape == (60000,) and ds.y.dtype == np.int64
        assert set(np.unique(ds.y)) == set(range(10))
    assert np.array_equal(fashion_train[0].X, fashion_train[1].X)
    assert validate_labels_for_classification(fashion_train[0].y, None, "fm") == 10


def test_fashion_mnist_test_and_errors(monkeypatch, tmp_path):
    if (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        ds = load_dataset("fashion-mnist:test")
        assert ds.X.shape == (10000, 784) and ds.y.shape == (10000,)
    with raises("fashion-mnist:train or fashion-mnist:test"):
        load_dataset("fashion-mnist:valid")
    monkeypatch.setenv("DELTAPROP_FASHION_MNIST", str(tmp_path))
    with raises(f"not found in {tmp_path}.*DELTAPROP_FASHION_MNIST"):
        load_dataset("fashion-mnist:train")


# -- round trips ------------------------------------------------------------------------------------

def test_npz_roundtrip_and_base_dir(tmp_path):
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0, 1, 2, 1], dtype=np.int32)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    ds = load_dataset("d.npz", base_dir=tmp_path)
    assert ds.X.dtype == np.float32 and np.array_equal(ds.X, X)
    assert ds.y.dtype == np.int64 and np.array_equal(ds.y, y)
    assert ds.source == str(tmp_path / "d.npz")


def test_npz_float_targets_and_no_labels(tmp_path):
    X, y = np.ones((3, 2)), np.linspace(0, 1, 6).reshape(3, 2)
    np.savez(tmp_path / "r.npz", X=X, y=y)
    assert load_dataset(str(tmp_path / "r.npz")).y.dtype == np.float64
    np.savez(tmp_path / "x.npz", X=X)
    assert load_dataset(str(tmp_path / "x.npz"), require_labels=False).y is None


@pytest.mark.parametrize("xname,yname", [("foo.npy", "foo_y.npy"), ("foo_X.npy", "foo_y.npy"),
                                         ("foo.X.npy", "foo.y.npy"), ("foo.npy", "foo.y.npy")])
def test_npy_pair_is_memmapped(tmp_path, xname, yname):
    X = np.random.default_rng(1).random((50, 4))
    y = np.arange(50) % 3
    np.save(tmp_path / xname, X)
    np.save(tmp_path / yname, y)
    ds = load_dataset(str(tmp_path / xname))
    assert isinstance(ds.X, np.memmap)
    assert np.array_equal(ds.X, X) and np.array_equal(ds.y, y) and ds.y.dtype == np.int64


def test_npy_without_labels(tmp_path):
    np.save(tmp_path / "feat.npy", np.zeros((2, 2)))
    with raises(r"feat\.npy: no labels file found; looked for feat_y\.npy and feat\.y\.npy"):
        load_dataset(str(tmp_path / "feat.npy"))
    assert load_dataset(str(tmp_path / "feat.npy"), require_labels=False).y is None


def test_csv_roundtrip(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,label,b\n1.5,0,2\n\n3,2,4e1\n")
    ds = load_dataset(str(p))
    assert ds.X.dtype == np.float64 and np.array_equal(ds.X, [[1.5, 2], [3, 40]])
    assert ds.y.dtype == np.int64 and list(ds.y) == [0, 2]
    ds = load_dataset(str(p), label_column="b")
    assert np.array_equal(ds.X, [[1.5, 0], [3, 2]]) and ds.y.dtype == np.int64
    p.write_text("a,target\n1,0.5\n2,1.5\n")
    assert load_dataset(str(p), label_column="target").y.dtype == np.float64


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    img_path, imgs, labels = idx_pair(tmp_path, gz=gz)
    ds = load_dataset(str(img_path))
    assert ds.X.shape == (5, 12) and ds.X.dtype == np.uint8
    assert np.array_equal(ds.X, imgs.reshape(5, 12))
    assert ds.y.dtype == np.int64 and np.array_equal(ds.y, labels)
    again = load_dataset(str(img_path))  # from the cache when gzipped
    assert np.array_equal(again.X, ds.X)
    assert any((tmp_path / "cache").glob("*.npy")) == gz


def test_idx_int32_and_float_payload(tmp_path):
    write_idx(tmp_path / "w-images-idx3-ubyte", np.arange(8).reshape(2, 2, 2), gz=False, code=0x0C)
    write_idx(tmp_path / "w-labels-idx1-ubyte.gz", np.array([1, 0]), gz=True)  # mixed compression
    ds = load_dataset(str(tmp_path / "w-images-idx3-ubyte"))
    assert ds.X.dtype == np.int32 and ds.X.dtype.isnative and list(ds.X[1]) == [4, 5, 6, 7]
    write_idx(tmp_path / "f-images-idx3-ubyte", np.full((2, 1, 1), np.nan), gz=False, code=0x0D)
    write_idx(tmp_path / "f-labels-idx1-ubyte", np.array([1, 0]), gz=False)
    with raises(r"f-images-idx3-ubyte: X contains 2 non-finite.*row 0, column 0"):
        load_dataset(str(tmp_path / "f-images-idx3-ubyte"))


def test_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    img_path, imgs, _ = idx_pair(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("DELTAPROP_CACHE_DIR", str(blocker / "sub"))
    assert np.array_equal(load_dataset(str(img_path)).X, imgs.reshape(5, -1))


def test_corrupt_cache_entry_is_replaced(tmp_path):
    img_path, imgs, _ = idx_pair(tmp_path)
    load_dataset(str(img_path))
    (entry,) = (tmp_path / "cache").glob("*.npy")
    entry.write_bytes(b"garbage")
    assert np.array_equal(load_dataset(str(img_path)).X, imgs.reshape(5, -1))
    assert np.array_equal(np.load(entry), imgs)


# -- errors -------------------------------------------------------------------------------------------

def test_missing_file_and_directory(tmp_path):
    with raises(f"{tmp_path / 'nope.npz'} does not exist"):
        load_dataset("nope.npz", base_dir=tmp_path)
    with raises("is a directory"):
        load_dataset(str(tmp_path))


def test_unsupported_extension(tmp_path):
    (tmp_path / "d.txt").write_text("1")
    with raises(r"d\.txt has an unsupported format"):
        load_dataset(str(tmp_path / "d.txt"))


@pytest.mark.parametrize("fmt", ["csv", "idx"])
def test_unreadable_file_any_user(tmp_path, monkeypatch, fmt):
    import deltaprop.io.csvfile as csvfile
    import deltaprop.io.idx as idx

    def denied(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    if fmt == "csv":
        p = tmp_path / "d.csv"
        p.write_text("a,label\n1,0\n")
        monkeypatch.setattr(csvfile, "open", denied, raising=False)
    else:
        p, _, _ = idx_pair(tmp_path)
        monkeypatch.setattr(idx, "open", denied, raising=False)
    with raises(f"{p.name}: cannot read .*Permission denied"):
        load_dataset(str(p))


def test_idx_bad_magic(tmp_path):
    p = tmp_path / "bad-images-idx3-ubyte"
    p.write_bytes(b"\x12\x34\x08\x03" + b"\0" * 20)
    write_idx(tmp_path / "bad-labels-idx1-ubyte", np.zeros(1), gz=False)
    with raises(r"bad-images-idx3-ubyte: not an IDX file \(bad magic number 12340803"):
        load_dataset(str(p))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_and_trailing(tmp_path, gz):
    img_path, _, _ = idx_pair(tmp_path, gz=False)
    raw = img_path.read_bytes()
    bad = tmp_path / ("cut-images-idx3-ubyte" + (".gz" if gz else ""))
    write_idx(tmp_path / "cut-labels-idx1-ubyte", np.zeros(5), gz=False)
    for payload in (raw[:-7], raw + b"\0"):
        (gzip.open if gz else open)(bad, "wb").write(payload)
        with raises(f"{bad.name}: IDX size mismatch: header declares shape \\(5, 3, 4\\)"):
            load_dataset(str(bad))
    with raises(r"cut-images-idx3-ubyte.*truncated IDX header"):
        (gzip.open if gz else open)(bad, "wb").write(raw[:9])
        load_dataset(str(bad))


def test_idx_truncated_gzip_stream(tmp_path):
    img_path, _, _ = idx_pair(tmp_path, gz=True)
    img_path.write_bytes(img_path.read_bytes()[:-10])
    with raises(f"{img_path.name}: cannot read \\(EOFError"):
        load_dataset(str(img_path))


def test_idx_missing_labels_and_length_mismatch(tmp_path):
    img_path, _, _ = idx_pair(tmp_path)
    write_idx(tmp_path / "toy-labels-idx1-ubyte.gz", np.zeros(4), gz=True)
    with raises(r"toy-labels-idx1-ubyte\.gz: X has 5 rows but y has 4"):
        load_dataset(str(img_path))
    (tmp_path / "toy-labels-idx1-ubyte.gz").unlink()
    with raises(r"toy-images-idx3-ubyte\.gz: no labels file found"):
        load_dataset(str(img_path))
    assert load_dataset(str(img_path), require_labels=False).y is None


def test_npz_missing_keys(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, features=np.ones((2, 2)), y=np.zeros(2))
    with raises(r"d\.npz: missing array\(s\) X; the file has features, y"):
        load_dataset(str(p))
    np.savez(p, X=np.ones((2, 2)), labels=np.zeros(2))
    with raises(r"d\.npz: missing array\(s\) y; the file has X, labels"):
        load_dataset(str(p))


def test_npz_not_a_zip(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"not a zip file")
    with raises(r"d\.npz: cannot read as \.npz"):
        load_dataset(str(tmp_path / "d.npz"))


@pytest.mark.parametrize("X,msg", [(np.ones(3), r"X must be 2-D.*\(3,\)"),
                                   (np.ones((2, 2, 2)), r"X must be 2-D.*\(2, 2, 2\)"),
                                   (np.ones((0, 3)), r"empty.*\(0, 3\)"),
                                   (np.array([["a"], ["b"]]), "dtype <U1, expected a numeric")])
def test_npz_bad_X(tmp_path, X, msg):
    np.savez(tmp_path / "d.npz", X=X, y=np.zeros(len(X)))
    with raises(r"d\.npz: .*" + msg):
        load_dataset(str(tmp_path / "d.npz"))


def test_length_mismatch_npy(tmp_path):
    np.save(tmp_path / "a_X.npy", np.ones((3, 2)))
    np.save(tmp_path / "a_y.npy", np.zeros(5))
    with raises(r"a_y\.npy: X has 3 rows but y has 5"):
        load_dataset(str(tmp_path / "a_X.npy"))


def test_nonfinite_in_memmapped_X_is_found_in_chunks(tmp_path, monkeypatch):
    import deltaprop.io.datasets as data
    monkeypatch.setattr(data, "_CHUNK_BYTES", 64)  # force many chunks
    X = np.zeros((100, 4))
    X[37, 2], X[80, 0], X[99, 3] = np.nan, np.inf, -np.inf
    np.save(tmp_path / "big.npy", X)
    np.save(tmp_path / "big_y.npy", np.zeros(100))
    with raises(r"big\.npy: X contains 3 non-finite value\(s\).*row 37, column 2"):
        load_dataset(str(tmp_path / "big.npy"))


def test_nonfinite_float_y(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((3, 1)), y=np.array([[0.0, 1], [np.nan, 1], [1, 1]]))
    with raises(r"d\.npz: y contains 1 non-finite.*row 1, column 0"):
        load_dataset(str(tmp_path / "d.npz"))


def test_csv_errors(tmp_path):
    p = tmp_path / "d.csv"
    cases = {
        "a,b,label\n1,2,0\n\n3,x,1\n": r"line 4, column 'b': 'x' is not a number",
        "a,b,label\n1,2,0\n3,,1\n": r"line 3, column 'b': '' is not a number",
        "a,b,label\n1,2,0\n3,4\n": r"line 3 has 2 fields but the header has 3",
        "a,b,label\n1,2,0\n\n3,inf,1\n5,nan,1\n": r"2 non-finite.*line 4, column 'b'",
        "a,b,label\n1,2,nan\n": r"1 non-finite.*line 2, column 'label'",
        "a,b,label\n": r"empty",
        "1,2,3\n4,5,6\n": r"line 1 must be a header row",
        "": r"line 1 must be a header row",
        "a,b,y\n1,2,3\n": r"label column 'label' not found; the columns are a, b, y",
    }
    for text, msg in cases.items():
        p.write_text(text)
        with raises(r"d\.csv: .*" + msg):
            load_dataset(str(p))
    p.write_text("a,b\n1,2\n")
    ds = load_dataset(str(p), require_labels=False)
    assert ds.y is None and ds.X.shape == (1, 2)


# -- label helpers --------------------------------------------------------------------------------

def test_validate_labels():
    assert validate_labels_for_classification(np.array([0, 2, 1]), None, "s") == 3
    assert validate_labels_for_classification(np.array([0, 2, 1]), 10, "s") == 10
    assert validate_labels_for_classification(np.array([0.0, 3.0]), None, "s") == 4
    assert as_labels(np.array([0.0, 3.0]), None, "s").dtype == np.int64
    with raises(r"src: label at row 1 is 2\.5, not an integer"):
        validate_labels_for_classification(np.array([1.0, 2.5, 0.5]), None, "src")
    with raises(r"src: label at row 2 is -1, labels must be non-negative"):
        validate_labels_for_classification(np.array([0, 1, -1]), None, "src")
    with raises(r"src: label at row 1 is 10, labels must be in 0\.\.9 \(10 classes\)"):
        validate_labels_for_classification(np.array([9, 10, 11]), 10, "src")
    with raises(r"src: classification needs 1-D integer or string labels, got shape \(2, 2\)"):
        validate_labels_for_classification(np.zeros((2, 2)), None, "src")
    with raises("src: classification needs labels"):
        validate_labels_for_classification(None, None, "src")
    assert validate_labels_for_classification(np.array([[1], [0]]), None, "s") == 2


def test_as_targets():
    t = as_targets(np.array([0.5, 1.5]), 1, "s")
    assert t.shape == (2, 1) and t.dtype == np.float64
    assert as_targets(np.ones((2, 3)), 3, "s", dtype=np.float32).dtype == np.float32
    assert np.array_equal(as_targets(np.array([2, 0]), 3, "s"), [[0, 0, 1], [1, 0, 0]])
    with raises(r"src: targets have shape \(2, 3\) but the model has 2 output"):
        as_targets(np.ones((2, 3)), 2, "src")
    with raises(r"src: targets have shape \(2,\) but the model has 4"):
        as_targets(np.array([0.5, 1.5]), 4, "src")
    with raises(r"src: label at row 0 is 5"):
        as_targets(np.array([5, 0]), 3, "src")


def _resident_pages(X: np.ndarray) -> np.ndarray:
    """mincore(2) of X's pages: True where the page is in the page cache."""
    import ctypes
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    start = X.ctypes.data - X.ctypes.data % mmap.PAGESIZE
    length = X.ctypes.data + X.nbytes - start
    vec = (ctypes.c_ubyte * ((length + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
    assert libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec) == 0, ctypes.get_errno()
    return np.frombuffer(vec, np.uint8) & 1 == 1


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise and mincore (Linux)")
def test_prefetch_rows_reads_a_memmapped_block_ahead(tmp_path):
    """prefetch_rows asks the kernel for exactly the rows' pages: evicted from the page cache
    first (POSIX_FADV_DONTNEED on the synced file), resident after, the rest still evicted."""
    import time
    rows, d = 4096, 256  # 1 KB rows, 4 MB
    np.save(tmp_path / "x.npy", np.ones((rows, d), np.float32))
    fd = os.open(tmp_path / "x.npy", os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    X = np.asarray(np.load(tmp_path / "x.npy", mmap_mode="r"))  # as prepare() holds it
    assert is_memory_mapped(X) and not is_memory_mapped(np.ones((2, 2)))
    before = _resident_pages(X)
    if before.mean() > 0.5:
        pytest.fail("the page cache kept the file after POSIX_FADV_DONTNEED: cannot observe prefetching")
    lo, hi = 1024, 3072  # pages of rows 1024..3071: 4 rows per 4 KB page
    prefetch_rows(X, lo, hi)
    deadline = time.monotonic() + 10
    while True:
        now = _resident_pages(X)
        page = lambda r: (X.ctypes.data % 4096 + r * d * 4) // 4096  # noqa: E731
        if now[page(lo) + 1:page(hi) - 1].all() or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert now[page(lo) + 1:page(hi) - 1].all()
    assert now[page(hi) + 64:].mean() < 0.5  # far past the range: not read (readahead aside)
    prefetch_rows(np.ones((10, 3)), 0, 10)  # arrays in RAM: a no-op
