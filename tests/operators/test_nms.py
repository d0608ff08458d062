"""The class-agnostic NMS both everything modes share, and FastSAM's snapping of boxes near the
border onto it (operators/everything: nms, one_pass)."""

import pytest
import torch

from operators.everything.nms import nms
from operators.everything.one_pass import snap_full_image_box


@pytest.mark.parametrize("matrix_max", [0, 4096])  # one box at a time / one IoU matrix
def test_nms_greedy_in_score_order(matrix_max):
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],
        [0.0, 0.0, 10.0, 9.5],  # IoU 0.95 with box 0: dropped
        [0.0, 0.0, 10.0, 9.0],  # IoU 0.9 with box 0: kept (drop needs IoU > 0.9)
        [20.0, 20.0, 30.0, 30.0],
    ])
    assert nms(boxes, None, 0.9, matrix_max=matrix_max).tolist() == [0, 2, 3]
    assert nms(boxes, None, 0.9, max_keep=2, matrix_max=matrix_max).tolist() == [0, 2]
    assert nms(boxes[:0], None, 0.9, matrix_max=matrix_max).tolist() == []


@pytest.mark.parametrize("matrix_max", [0, 4096])
def test_nms_nan_ious_and_no_keep(matrix_max):
    boxes = torch.tensor([[5.0, 5, 5, 9], [5, 5, 5, 9], [0, 0, 10, 10]])  # two zero-area boxes
    # 0/0 suppresses not
    assert nms(boxes, None, 0.9, matrix_max=matrix_max).tolist() == [0, 1, 2]
    assert nms(boxes, None, 0.9, max_keep=0, matrix_max=matrix_max).tolist() == []


@pytest.mark.parametrize(("iou", "max_keep"), [(0.9, 300), (0.5, 300), (0.7, 7)])
def test_nms_matrix_and_stepwise_agree(iou, max_keep):
    g = torch.Generator().manual_seed(5)
    centres = torch.rand(40, 2, generator=g) * 900  # clusters of near-duplicates
    xy = centres[torch.randint(0, 40, (600,), generator=g)] + torch.randn(600, 2, generator=g) * 4
    wh = 20 + torch.rand(600, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + wh], 1)
    stepwise = nms(boxes, None, iou, max_keep=max_keep, matrix_max=0)
    matrix = nms(boxes, None, iou, max_keep=max_keep)
    assert 0 < len(stepwise) <= max_keep and len(stepwise) < 600
    assert torch.equal(matrix, stepwise)


def test_snap_full_image_box():
    """Sides within 20 px of the border move onto it; boxes then covering > 90% of the
    input become the whole input (each of them, where the official code handles one)."""
    boxes = torch.tensor([
        [19.0, 25.0, 200.0, 90.0],  # x1 snaps to 0
        [30.0, 30.0, 301.0, 205.0],  # x2, y2 snap to 320, 224
        [5.0, 3.0, 310.0, 215.0],  # snaps to the whole input
        [10.0, 10.0, 300.0, 210.0],  # also > 0.9 after snapping
    ])
    out = snap_full_image_box(boxes, (224, 320))
    assert out.tolist() == [
        [0.0, 25.0, 200.0, 90.0],
        [30.0, 30.0, 320.0, 224.0],
        [0.0, 0.0, 320.0, 224.0],
        [0.0, 0.0, 320.0, 224.0],
    ]
