"""Arrow columns of the writer: tensors wrap the numpy buffer (no copy), nulls where a row is
not ok, and the types a reader without samdata sees."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from operators.shards.write import image_id_array, pair_array, tensor_array


def test_tensor_array_wraps_the_numpy_buffer():
    values = np.arange(3 * 2 * 4, dtype=np.float16).reshape(3, 2, 4)
    arr = tensor_array(values, np.array([True, False, True]))
    assert arr.type == pa.fixed_shape_tensor(pa.float16(), [2, 4])
    flat = arr.storage.values
    assert flat.buffers()[1].address == values.ctypes.data  # zero-copy
    assert arr.storage.to_pylist()[1] is None
    np.testing.assert_array_equal(
        np.asarray(arr.storage[2].values.to_numpy()).reshape(2, 4), values[2])


def test_pairs_and_ids_are_null_where_not_valid():
    hw = pair_array(np.array([[480, 640], [0, 0], [1500, 2250]]), np.array([True, False, True]))
    assert hw.type == pa.list_(pa.int32(), 2)
    assert hw.to_pylist() == [[480, 640], None, [1500, 2250]]
    ids = image_id_array(np.array([7, -1, 2**40]))
    assert ids.type == pa.int64() and ids.to_pylist() == [7, None, 2**40]


def test_part_names_differ_for_keys_that_share_a_long_prefix():
    from operators.shards.write import part_name

    prefix = "p" * 200
    names = {part_name("shard", [f"{prefix}{i}", f"{prefix}{i}x"]) for i in range(50)}
    assert len(names) == 50 and all(len(n) < 120 for n in names)
    # the same keys (a retried write of one batch) give the same name, in any order
    assert part_name("s", ["b", "a"]) == part_name("s", ["a", "b"]) != part_name("s", ["a"])


def test_a_failed_local_write_leaves_no_temporary_file_and_says_write(tmp_path):
    """RLIMIT_FSIZE makes the write fail half-way, as a full disk does."""
    import subprocess
    import sys

    script = f"""
import resource, signal
from operators.config import StorageConfig
from operators.shards.resumable import StorageUnavailable
from operators.shards.write import write_file
import fsspec
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    write_file(fsspec.filesystem("file"), "{tmp_path}/out/part.parquet", b"x" * 100_000,
               StorageConfig(read_retries=1, retry_backoff_s=0.01))
except StorageUnavailable as e:
    print(e)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.startswith("cannot write '"), done.stdout + done.stderr
    assert "File too large" in done.stdout
    assert list((tmp_path / "out").iterdir()) == []  # no hidden .tmp left behind
