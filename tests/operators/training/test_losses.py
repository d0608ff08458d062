"""The losses of both stages count what they should, over the region they should."""

from __future__ import annotations

import pytest
import torch

from operators.training.losses import (
    cell_mask,
    dice,
    focal,
    hard_iou,
    mask_losses,
    masked_cosine,
    masked_mse,
)

W = {"bce_weight": 1.0, "focal_weight": 0.0, "dice_weight": 1.0, "iou_weight": 1.0}


def test_masked_mse_ignores_the_padded_cells():
    torch.manual_seed(0)
    teacher = torch.randn(2, 4, 8, 8)
    student = teacher.clone()
    valid = torch.tensor([[8, 5], [3, 8]])  # a wide and a tall image
    student[0, :, :, 5:] += 100.0  # errors in the padding only
    student[1, :, 3:, :] -= 100.0
    assert masked_mse(student, teacher, valid).item() == 0.0
    student[0, :, 0, 0] += 1.0  # one valid cell off by 1 on every channel
    # image 0: 1.0 over 8*5 cells; image 1: 0; mean over images
    assert masked_mse(student, teacher, valid).item() == pytest.approx(1.0 / 40 / 2)
    assert cell_mask(valid, (8, 8)).sum(dim=(1, 2)).tolist() == [40, 24]


def test_masked_mse_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="expected embeddings of one shape"):
        masked_mse(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 4, 4), torch.tensor([[8, 8]]))


def test_cosine_is_one_for_a_scaled_copy_inside_the_region():
    torch.manual_seed(1)
    t = torch.randn(1, 4, 8, 8)
    s = 3 * t
    s[..., 6:] = torch.randn(1, 4, 8, 2)  # padding differs
    assert masked_cosine(s, t, torch.tensor([[8, 6]])).item() == pytest.approx(1.0, abs=1e-6)


def test_mask_losses_take_the_best_output_for_ground_truth():
    target = torch.zeros(1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1
    good = (target * 2 - 1) * 20  # confident and right
    bad = -good
    logits = torch.cat([bad, good, bad], dim=1)  # (1, 3, 16, 16): output 1 is right
    iou_pred = torch.tensor([[0.0, 1.0, 0.0]])
    region = torch.ones(1, 16, 16, dtype=torch.bool)
    total, parts = mask_losses(logits, iou_pred, target, region, W, min_over_outputs=True)
    assert parts["bce"].item() < 1e-6 and parts["dice"].item() < 0.01
    assert parts["iou"].item() == pytest.approx(0.0, abs=1e-6)  # every output's IoU right
    mean_total, _ = mask_losses(logits, iou_pred, target, region, W, min_over_outputs=False)
    assert mean_total.item() > total.item() + 1.0


def test_losses_count_only_the_region():
    target = torch.zeros(1, 1, 8, 8)
    logits = torch.full((1, 1, 8, 8), -10.0)
    logits[..., :, 6:] = 10.0  # wrong, but only outside the region
    region = torch.zeros(1, 8, 8, dtype=torch.bool)
    region[:, :, :6] = True
    assert focal(logits, target, region).item() < 1e-6
    assert hard_iou(logits, target, region).item() == 0.0  # both empty inside
    t2 = target.clone()
    t2[..., 0, 0] = 1
    assert dice(logits, t2, region).item() > 0.4  # the missed pixel counts
