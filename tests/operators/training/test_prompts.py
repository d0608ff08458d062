"""Prompts drawn on the device and the learning-rate schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from operators.training.config import Stage1Config
from operators.training.prompts import (
    PAD_LABEL,
    jitter_boxes,
    refinement_points,
    sample_points,
)
from operators.training.schedule import build_optimizer, learning_rate, param_groups


def test_points_fall_inside_their_mask_and_vanished_masks_use_the_box_centre():
    masks = torch.zeros(3, 16, 16, dtype=torch.uint8)
    masks[0, 2:5, 10:14] = 1
    masks[1, 8:16, 0:3] = 1  # mask 2 is empty (too small at this size)
    boxes = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [40.0, 60.0, 80.0, 100.0]])
    gen = torch.Generator().manual_seed(0)
    coords, labels = sample_points(masks, boxes, 10, frame=128, gen=gen)
    assert coords.shape == (3, 10, 2) and labels.shape == (3, 10)
    assert ((labels == 1).sum(1) >= 1).all() and ((labels == 1) | (labels == PAD_LABEL)).all()
    cells = (coords / 8).long()  # frame 128 over a 16 grid: 8 px a cell
    for i in range(2):
        assert masks[i][cells[i, :, 1], cells[i, :, 0]].all()
    assert torch.allclose(coords[2], torch.tensor([60.0, 80.0]).expand(10, 2))


def test_refinement_point_is_in_the_disagreement_with_the_right_label():
    pred = torch.zeros(2, 8, 8, dtype=torch.bool)
    target = torch.zeros(2, 8, 8, dtype=torch.bool)
    target[0, 2, 3] = True  # a missed pixel: positive click there
    pred[1] = target[1] = True  # agreement everywhere: no point
    region = torch.ones(2, 8, 8, dtype=torch.bool)
    coords, labels = refinement_points(pred, target, region, frame=64,
                                       gen=torch.Generator().manual_seed(1))
    assert labels.tolist() == [[1], [PAD_LABEL]]
    assert (coords[0, 0] // 8).long().tolist() == [3, 2]  # (x, y) cell


def test_box_noise_is_proportional_and_capped():
    boxes = torch.tensor([[0.0, 0.0, 100.0, 10.0]]).repeat(4000, 1)
    out = jitter_boxes(boxes, 0.1, 5.0, torch.Generator().manual_seed(2))
    d = out - boxes
    assert d[:, 1].std().item() == pytest.approx(1.0, rel=0.1)  # 10% of a 10 px side
    assert d[:, 0].std().item() == pytest.approx(5.0, rel=0.1)  # 10 px capped at 5
    assert (out[:, 2] >= out[:, 0]).all() and (out[:, 3] >= out[:, 1]).all()


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = Stage1Config(lr=1e-2, min_lr=1e-5, warmup_lr=1e-4)
    assert learning_rate(0, 100, 10, cfg) == pytest.approx(1e-4)
    assert learning_rate(10, 100, 10, cfg) == pytest.approx(1e-2)
    assert learning_rate(55, 100, 10, cfg) == pytest.approx((1e-2 + 1e-5) / 2)
    assert learning_rate(100, 100, 10, cfg) == pytest.approx(1e-5)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    groups = param_groups(model, cfg)
    assert [len(g["params"]) for g in groups] == [1, 3]  # weight | bias, norm weight, bias
    assert groups[1]["weight_decay"] == 0.0
    opt, sched = build_optimizer(model, cfg, total=100, warmup=10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2)
