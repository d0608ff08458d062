"""The predictor API on the tiny SAM: shapes, determinism, batching, prompts, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import Predictor, build_model
from models.transforms import longest_side_shape


@pytest.fixture(scope="module")
def predictor():
    return Predictor(build_model("sam_tiny", seed=0))


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_embed_shape_dtype_and_determinism(predictor):
    images = [_img(50, 80), _img(130, 40, 1)]
    a = predictor.embed(images)
    b = predictor.embed(images)
    assert a.shape == (2, 32, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])


def test_batch_of_different_sizes_equals_one_by_one(predictor):
    images = [_img(50, 80), _img(130, 40, 1), _img(7, 300, 2)]
    batch = predictor.embed(images)
    for i, image in enumerate(images):
        torch.testing.assert_close(batch[i], predictor.embed([image])[0], rtol=1e-4, atol=1e-5)


def test_padding_is_zero_after_normalisation(predictor):
    model = predictor.model
    padded, input_hw = model.prepare_image(_img(40, 128))
    assert input_hw == (40, 128) and padded.shape == (128, 128, 3)
    x = model.normalize(torch.from_numpy(padded).permute(2, 0, 1)[None], [input_hw])
    assert torch.all(x[..., 40:, :] == 0)
    assert torch.allclose(x[0, 0, 0, 0], (padded[0, 0, 0] - 123.675) / torch.tensor(58.395))


def test_resize_rounds_half_up_like_the_official_transform():
    assert longest_side_shape(1500, 2250, 1024) == (683, 1024)
    assert longest_side_shape(2250, 1500, 1024) == (1024, 683)
    assert longest_side_shape(3, 1000, 1024) == (3, 1024)  # 3.072 -> 3
    assert longest_side_shape(5, 2048, 1024) == (3, 1024)  # 2.5 -> 3 (half up)


@pytest.mark.parametrize("multimask,channels", [(True, 3), (False, 1)])
def test_point_prompts_give_masks_at_original_size(predictor, multimask, channels):
    image = _img(70, 110)
    emb = predictor.embed([image])
    out = predictor.predict(emb[0], (70, 110), point_coords=[[10, 20], [60, 30]],
                            point_labels=[1, 0], multimask=multimask)
    assert out["masks"].shape == (1, channels, 70, 110)
    assert out["iou_predictions"].shape == (1, channels)
    assert out["low_res_logits"].shape == (1, channels, 32, 32)
    binary = predictor.predict(emb[0], (70, 110), point_coords=[[10, 20]], point_labels=[1],
                               multimask=multimask, return_logits=False)["masks"]
    assert binary.dtype == torch.bool


def test_batched_prompts_and_boxes(predictor):
    image = _img(90, 60)
    emb = predictor.embed([image])[0]
    boxes = [[5, 5, 40, 60], [0, 0, 59, 89]]
    out = predictor.predict(emb, (90, 60), boxes=boxes)
    assert out["masks"].shape == (2, 3, 90, 60)
    one = predictor.predict(emb, (90, 60), boxes=boxes[1])
    torch.testing.assert_close(out["masks"][1], one["masks"][0], rtol=1e-4, atol=1e-4)
    # a box changes the answer (the prompt is used)
    assert not torch.allclose(out["masks"][0], out["masks"][1])
    # points and a box together: P sets of N points with P boxes
    both = predictor.predict(emb, (90, 60), point_coords=[[[10, 10]], [[30, 30]]],
                             point_labels=[[1], [1]], boxes=boxes)
    assert both["masks"].shape == (2, 3, 90, 60)


def test_postprocess_is_bilinear_crop_bilinear(predictor):
    model = predictor.model
    low = torch.zeros(1, 1, 32, 32)
    low[..., :16, :] = 5.0  # upper half of the prompt frame
    orig = (50, 200)  # resized frame 32x128: only the top 32 rows of 128 are image
    out = model.postprocess_masks(low, orig)
    assert out.shape == (1, 1, 50, 200)
    # rows of the image frame all lie in the upper half of the 128 frame -> all positive
    assert (out > 0).all()


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((10, 10), np.uint8), "uint8 HxWx3"),
        (np.zeros((10, 10, 4), np.uint8), "uint8 HxWx3"),
        (np.zeros((10, 10, 3), np.float32), "got float32"),
        (np.zeros((0, 10, 3), np.uint8), "non-empty"),
        ([[1, 2, 3]], "numpy"),
    ],
)
def test_bad_images_are_refused_with_what_was_expected(predictor, image, match):
    with pytest.raises((ValueError, TypeError), match=match):
        predictor.embed([_img(10, 10), image])


def test_bad_prompts_are_refused(predictor):
    emb = predictor.embed([_img(20, 20)])[0]
    with pytest.raises(ValueError, match="at least one prompt"):
        predictor.predict(emb, (20, 20))
    with pytest.raises(ValueError, match="point_labels"):
        predictor.predict(emb, (20, 20), point_coords=[[1, 1]])
    with pytest.raises(ValueError, match="expected one embedding of shape"):
        predictor.predict(torch.zeros(256, 64, 64), (20, 20), boxes=[0, 0, 5, 5])
    with pytest.raises(ValueError, match="empty list"):
        predictor.embed([])
    with pytest.raises(ValueError, match="precision"):
        Predictor(predictor.model, precision="int8")
