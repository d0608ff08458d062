"""Import the official segment-anything package (PyPI `segment-anything==1.0`): the reference
that the parity tests and bench/autolabel.py compare with.

Its predictor imports two torchvision functions (its mask generator two box ops); torchvision
has no CPU build here, so when it is missing we register a stand-in that does what torchvision
does for a PIL input (`to_pil_image` of a uint8 HxWx3 array, `resize(pil, [h, w])` =
`pil.resize((w, h), BILINEAR)`) plus a plain greedy `batched_nms`. Its small-region cleanup
imports OpenCV, not a dependency either: `cv2.connectedComponentsWithStats` gets a plain
breadth-first labeller (`bfs_components`, written for the tests, independent of
operators/regions.py).
The model code itself is the official one, untouched.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections import deque
from functools import partial

import numpy as np
from PIL import Image


def _shim_torchvision() -> None:
    try:
        import torchvision.transforms.functional  # noqa: F401

        return
    except Exception:
        pass
    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")

    def to_pil_image(image: np.ndarray) -> Image.Image:
        return Image.fromarray(image)

    def resize(image: Image.Image, size: list[int] | tuple[int, int]) -> Image.Image:
        return image.resize((size[1], size[0]), Image.BILINEAR)

    def box_area(boxes):
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def batched_nms(boxes, scores, idxs, iou_threshold):
        # Greedy NMS per class, highest score first; drop IoU > threshold (torchvision's rule).
        # On the host with one IoU matrix, as torchvision's own kernel is a single call: a
        # per-pair loop would slow the official generator down on a GPU and flatter ours.
        import torch

        b, c = boxes.detach().cpu(), idxs.detach().cpu().numpy()
        area = box_area(b)
        lt = torch.maximum(b[:, None, :2], b[None, :, :2])
        rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        over = (inter / (area[:, None] + area[None, :] - inter) > iou_threshold).numpy()
        order = torch.argsort(scores.detach().cpu(), descending=True, stable=True).tolist()
        suppressed = np.zeros(len(order), dtype=bool)
        keep: list[int] = []
        for i in order:  # ties: lower index first
            if not suppressed[i]:
                keep.append(i)
                suppressed |= over[i] & (c == c[i])
        return torch.tensor(keep, dtype=torch.long, device=boxes.device)

    ops = types.ModuleType("torchvision.ops")
    ops_boxes = types.ModuleType("torchvision.ops.boxes")
    ops_boxes.box_area = box_area
    ops_boxes.batched_nms = batched_nms
    ops.boxes = ops_boxes
    tv.ops = ops
    sys.modules.update({"torchvision.ops": ops, "torchvision.ops.boxes": ops_boxes})
    functional.to_pil_image = to_pil_image
    functional.resize = resize
    transforms.functional = functional
    tv.transforms = transforms
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
        }
    )


def bfs_components(image: np.ndarray, connectivity: int = 8):
    """OpenCV's `connectedComponentsWithStats(image, connectivity)` for a uint8 HxW image:
    (n_labels, int32 HxW labels, int32 n_labels x 5 stats [x, y, w, h, area], centroids).
    Label 0 is the zero pixels; the others are numbered in raster order of first pixel."""
    h, w = image.shape
    labels = np.zeros((h, w), np.int32)
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    if connectivity == 4:
        steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    areas = [int((image == 0).sum())]
    n = 1
    for y0, x0 in zip(*np.nonzero(image), strict=True):
        if labels[y0, x0]:
            continue
        labels[y0, x0] = n
        queue, area = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            area += 1
            for dy, dx in steps:
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and image[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = n
                    queue.append((yy, xx))
        areas.append(area)
        n += 1
    stats = np.zeros((n, 5), np.int32)
    stats[:, 4] = areas
    return n, labels, stats, np.zeros((n, 2))


def _shim_cv2() -> None:
    try:
        import cv2  # noqa: F401

        return
    except Exception:
        pass
    cv2 = types.ModuleType("cv2")
    cv2.connectedComponentsWithStats = bfs_components
    sys.modules["cv2"] = cv2


def official():
    """The official `segment_anything` package, with the stand-ins above where torchvision or
    OpenCV are missing. Raises ImportError when the package is not installed (test extra)."""
    _shim_torchvision()
    _shim_cv2()
    return importlib.import_module("segment_anything")


def official_tiny_sam(sa):
    """The official Sam at sam_tiny's sizes (models/registry.py `build_sam_tiny`), eval mode."""
    import torch

    m = sa.modeling
    return m.Sam(
        image_encoder=m.ImageEncoderViT(
            img_size=128, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4,
            out_chans=32, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=3, global_attn_indexes=[1],
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=32, image_embedding_size=(8, 8), input_image_size=(128, 128),
            mask_in_chans=16,
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
            transformer_dim=32, iou_head_depth=3, iou_head_hidden_dim=32,
        ),
    ).eval()


OFFICIAL_NAMES = {"sam_vit_b": "vit_b", "sam_vit_l": "vit_l", "sam_vit_h": "vit_h"}


def paired_models(name: str, seed: int):
    """(official package, our registry model `name`, the official model) with the same seeded
    weights, the hypernetwork output layers scaled by 40 so that random masks are not all
    empty. SAM sizes map to the official registry, sam_tiny to official_tiny_sam and a
    student to the official Sam around our encoder (as its own package builds it)."""
    from models import build_model

    sa = official()
    ours = build_model(name, seed=seed)
    sd = ours.state_dict()
    for k in sd:
        if k.startswith("mask_decoder.output_hypernetworks_mlps") and k.endswith("2.weight"):
            sd[k] = sd[k] * 40
    ours.load_state_dict(sd)
    if name == "sam_tiny":
        theirs = official_tiny_sam(sa)
    elif name in OFFICIAL_NAMES:
        theirs = sa.sam_model_registry[OFFICIAL_NAMES[name]]()
    else:
        m = sa.modeling
        size = ours.prompt_size
        grid = ours.prompt_encoder.image_embedding_size
        theirs = m.Sam(
            image_encoder=build_model(name).image_encoder,
            prompt_encoder=m.PromptEncoder(embed_dim=256, image_embedding_size=grid,
                                           input_image_size=(size, size), mask_in_chans=16),
            mask_decoder=m.MaskDecoder(
                num_multimask_outputs=3,
                transformer=m.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                num_heads=8),
                transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256))
    theirs.load_state_dict(sd, strict=True)
    return sa, ours.eval(), theirs.eval()
