"""JPEG draft decoding: much less decode work, the model input within a stated tolerance."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from models.transforms import resize_longest_side
from operators.shards.decode import decode_image_for
from operators.shards.sample import write_sample_corpus


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[bytes]:
    path = write_sample_corpus(str(tmp_path_factory.mktemp("big")), shards=1,
                               images_per_shard=3, seed=1, min_side=2100, max_side=2250)[0]
    with tarfile.open(path) as tar:
        return [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]


def test_draft_keeps_original_size_and_model_input_within_tolerance(jpegs):
    for data in jpegs:
        full, hw = decode_image_for(data)
        small, hw_draft = decode_image_for(data, draft_long_side=1024)
        assert hw == hw_draft == full.shape[:2]
        assert 1024 <= max(small.shape[:2]) < max(full.shape[:2]) / 1.9  # 1/2 DCT scale
        a, b = resize_longest_side(full, 1024), resize_longest_side(small, 1024)
        # the tolerance documented for `input.jpeg_draft` (SAM-sized 1024 inputs): the short
        # side may round one pixel differently; the pixels differ by <= 0.25 on average
        assert max(abs(x - y) for x, y in zip(a.shape, b.shape, strict=True)) <= 1
        h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
        assert np.abs(a[:h, :w].astype(int) - b[:h, :w].astype(int)).mean() <= 0.25


def test_draft_is_off_for_small_targets_and_non_jpeg(jpegs):
    full, _ = decode_image_for(jpegs[0])
    same, _ = decode_image_for(jpegs[0], draft_long_side=4000)  # already smaller: no draft
    assert np.array_equal(full, same)
