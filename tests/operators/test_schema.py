"""The declared rows of operators/shards/schema.py refuse fields they do not declare."""

import numpy as np
import pytest

from operators.shards.listing import Shard
from operators.shards.schema import PREPARED_DEFAULTS, item_shard, prepared_row, shard_item


def test_shard_items_round_trip_and_refuse_undeclared_fields():
    shard = Shard(name="sa_000007", url="s3://b/sa_000007.tar", container="tar")
    item = shard_item(shard, skip_keys=["sa_1"])
    assert item == {"shard": "sa_000007", "url": "s3://b/sa_000007.tar", "container": "tar",
                    "skip_keys": ["sa_1"]}
    assert item_shard(item) == shard
    assert shard_item(shard, keys=None)["keys"] is None
    with pytest.raises(KeyError, match=r"unknown \['skip'\]"):
        shard_item(shard, skip=["sa_1"])


def test_prepared_rows_take_declared_fields_only():
    row = prepared_row(shard="sa_000001", key="sa_5", status="error", error="bad jpeg")
    assert set(row) == set(PREPARED_DEFAULTS)
    assert (row["key"], row["error"], row["is_end"]) == ("sa_5", "bad jpeg", False)
    assert row["orig_hw"].dtype == np.int32 and row["orig_hw"].shape == (2,)
    with pytest.raises(KeyError, match=r"unknown \['keys'\]"):
        prepared_row(keys="sa_5")
