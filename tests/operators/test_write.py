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
