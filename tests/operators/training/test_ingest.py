"""Training rows from an embedding corpus and its source shards (the CPU side of distill)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from operators.shards.prepare import model_skeleton
from operators.training.ingest import (
    IngestSpec,
    attach_sources,
    corpus_shards,
    decode_rle,
    embedding_info,
    embedding_shards,
    read_training_rows,
    split_shards,
)
from operators.training.pairing import valid_cells
from tests.operators.training.corpus import make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("c"), shards=3, per_shard=4)


def test_the_corpus_is_described_and_split_by_shard(corpus):
    _, emb = corpus
    shards = embedding_shards(emb)
    assert [s.name for s in shards] == ["sa_000000", "sa_000001", "sa_000002"]
    assert [s.rows for s in shards] == [4, 4, 4]
    info = embedding_info(shards)
    assert (info.model, info.checkpoint_sha256, info.shape, info.has_image) == \
        ("sam_tiny", None, (32, 8, 8), True)
    train, val = split_shards(shards, 1)
    assert [s.name for s in val] == ["sa_000002"] and len(train) == 2
    with pytest.raises(ValueError, match="data.val_shards: expected fewer than the 3 shards"):
        split_shards(shards, 3)
    with pytest.raises(FileNotFoundError, match="data.embeddings: expected committed shards"):
        embedding_shards(emb, shard_range="sa_000009..sa_000010")


def test_rows_from_the_stored_jpeg_and_from_the_source_shard_agree(corpus):
    _, emb = corpus
    shard = attach_sources(embedding_shards(emb)[:1], None)[0]
    assert shard.url.endswith("sa_000000.tar")
    spec = IngestSpec(student="mobile_sam_tiny", teacher="sam_tiny", teacher_embedding=True)
    from_jpeg = list(read_training_rows(shard.item(), spec))
    from_source = list(read_training_rows(
        shard.item(), IngestSpec(**{**spec.__dict__, "prefer_source_image": True})))
    assert len(from_jpeg) == len(from_source) == 4
    for a, b in zip(from_jpeg, from_source, strict=True):
        assert a["image_id"] == b["image_id"]
        np.testing.assert_array_equal(a["target"], b["target"])  # the same teacher row
        np.testing.assert_array_equal(a["valid"], b["valid"])
        np.testing.assert_array_equal(a["orig_hw"], b["orig_hw"])
        assert a["pixels"].shape == (128, 128, 3) and a["target"].dtype == np.float16
        # the stored JPEG is the teacher's resized input: close to the original, resized
        diff = np.abs(a["pixels"].astype(int) - b["pixels"].astype(int)).mean()
        assert diff < 4.0
        # teacher and student both see 128: the grid's valid cells follow the input size
        assert a["valid"].tolist() == list(valid_cells(tuple(a["input_hw"]), 128, (8, 8)))


def test_stage2_rows_carry_masks_in_the_prompt_frame_matching_their_boxes(corpus):
    src, _ = corpus
    shard = corpus_shards([src])[0]
    assert shard.rows == 4  # counted from the tar's headers
    spec = IngestSpec(student="sam_tiny", instances=5, mask_size=32, ground_truth_rles=True,
                      random_instances=False)
    rows = list(read_training_rows(shard.item(), spec))
    assert rows
    student = model_skeleton("sam_tiny")
    for row in rows:
        n = int(row["count"])
        assert row["masks"].shape == (5, 32, 32) and 1 <= n <= 5
        assert not row["masks"][n:].any() and not row["areas"][n:].any()
        rles = json.loads(row["rles"])
        assert len(rles) == n
        for i in range(n):
            ys, xs = np.nonzero(row["masks"][i])
            box = row["boxes"][i] * 32 / student.prompt_size  # prompt frame -> the 32 grid
            assert abs(xs.min() - box[0]) <= 1.5 and abs(xs.max() + 1 - box[2]) <= 1.5
            assert abs(ys.min() - box[1]) <= 1.5 and abs(ys.max() + 1 - box[3]) <= 1.5
            gt = decode_rle(rles[i])
            assert gt.shape == tuple(row["orig_hw"]) and gt.sum() == rles[i]["area"]
