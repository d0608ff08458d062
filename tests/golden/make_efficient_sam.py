"""Golden outputs of the official EfficientSAM for tests/models/test_efficient_sam.py.

The official code is not a package on PyPI, so CI compares against numbers stored by this
script, run by hand on an export of yformer/EfficientSAM (its model code only):

    mkdir -p /tmp/official/EfficientSAM
    git -C <EfficientSAM git dir> archive HEAD efficient_sam | tar -x -C /tmp/official/EfficientSAM
    .venv/bin/python -m tests.golden.make_efficient_sam --official /tmp/official/EfficientSAM
    # writes tests/data/golden_efficient_sam_vitt.npz

It builds the official model (`build_efficient_sam(192, 3)`, what `build_efficient_sam_vitt`
builds before it loads its file), loads OUR seeded weights (`golden_state_dict`:
`seeded_state_dict(model, 0)`) with strict=True, and runs the official `get_image_embeddings`
and `predict_masks` on a seeded random 480x640 image with point prompts (one with more than 6
points and a negative coordinate), a box and a box with a point. It stores a seeded subset of
the embedding, subsampled low-res logits, full-size logits at random pixels and the IoU
predictions. The helpers above `main` are what the test uses to rebuild the same weights, image
and prompts without the official code.

Nothing is shimmed: the official model code imports only torch and numpy. The one outside
function its examples use, torchvision's `ToTensor`, is written out in `to_tensor` (uint8
HxWx3 -> float32 3xHxW divided by 255, what torchvision does for a numpy array).

`--models vitt vits` also runs EfficientSAM-S (about 3x the encoder work of ViT-T, seconds on
a CPU) and writes golden_efficient_sam_vits.npz; the tests use both files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.golden.common import random_image, seeded_indices

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"

# The official builder's arguments per model: (encoder_patch_embed_dim, encoder_num_heads)
OFFICIAL_ARGS = {"vitt": (192, 3), "vits": (384, 6)}
WEIGHT_SEED = 0
IMAGE_SEED = 0
IMAGE_SHAPE = (480, 640, 3)
SAMPLE_SEED = 1  # which embedding entries / mask pixels are stored
EMBED_SAMPLES = 4096
MASK_PIXELS = 1024
LOW_RES_STRIDE = 8  # 256x256 low-res logits stored as 32x32 (keeps the file under 300 KB)
# Prompts in original-image pixels: (point coords Nx2 (x, y) or None, labels N (1 foreground,
# 0 background) or None, box XYXY or None, multimask_output).
PROMPTS = (
    (np.array([[320.0, 240.0]]), np.array([1]), None, True),
    (np.array([[100.0, 200.0], [400.0, 300.0]]), np.array([1, 0]), None, True),
    (np.array([[50.5, 60.0], [600.0, 420.0], [310.0, 30.0]]), np.array([1, 1, 0]), None, True),
    # 7 points: the decoder keeps the first 6; x = -3 is the official "no point" value (-1)
    (np.array([[10.0, 20.0], [620.0, 30.0], [-3.0, 200.0], [320.0, 470.0], [330.0, 250.0],
               [600.0, 400.0], [200.0, 100.0]]), np.array([1, 0, 1, 1, 0, 1, 1]), None, True),
    (None, None, np.array([120.0, 80.0, 460.0, 390.0]), True),
    (np.array([[300.0, 200.0]]), np.array([0]), np.array([200.5, 150.0, 520.0, 430.0]), True),
    (np.array([[320.0, 240.0]]), np.array([1]), None, False),  # the single-mask output
)


def golden_state_dict(model: nn.Module, seed: int = WEIGHT_SEED) -> dict[str, torch.Tensor]:
    """The golden weights, keyed as `model.state_dict()`: `seeded_state_dict(model, seed)`
    (position table ~ N(0, 0.02), Fourier matrix ~ N(0, 1), every tensor non-trivial)."""
    from models.checkpoint import seeded_state_dict

    return seeded_state_dict(model, seed)


def golden_image(seed: int = IMAGE_SEED, shape: tuple[int, ...] = IMAGE_SHAPE) -> np.ndarray:
    """Seeded random uint8 HxWx3 RGB image."""
    return random_image(seed, shape)


def sample_indices(embedding_numel: int, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Seeded sorted flat indices: EMBED_SAMPLES into the embedding, MASK_PIXELS into HxW."""
    return seeded_indices(embedding_numel, hw, EMBED_SAMPLES, MASK_PIXELS, SAMPLE_SEED)


def official_points(
    coords: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """A prompt as the official model takes it: float32 Nx2 points, int64 N labels; a box is
    its top-left and bottom-right corners with labels 2 and 3, put before any points."""
    pts, labs = [], []
    if box is not None:
        pts.append(np.asarray(box, np.float32).reshape(2, 2))
        labs.append(np.array([2, 3]))
    if coords is not None:
        pts.append(np.asarray(coords, np.float32))
        labs.append(np.asarray(labels))
    return np.concatenate(pts).astype(np.float32), np.concatenate(labs).astype(np.int64)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """torchvision `ToTensor` of a uint8 HxWx3 array: float32 3xHxW in 0..1."""
    return torch.from_numpy(image.transpose(2, 0, 1)).contiguous().float().div(255)


# -- the official code (only for main) ----------------------------------------------------------


def make_golden(variant: str, out: Path) -> None:
    """Run the official EfficientSAM-`variant` on the golden weights, image and prompts."""
    from efficient_sam.efficient_sam import build_efficient_sam

    from models.efficient_sam import BUILDERS

    dim, heads = OFFICIAL_ARGS[variant]
    official = build_efficient_sam(dim, heads, checkpoint=None).eval()
    official.load_state_dict(golden_state_dict(BUILDERS[f"efficient_sam_{variant}"]()),
                             strict=True)
    official.eval()

    image = golden_image()
    h, w = image.shape[:2]
    with torch.inference_mode():
        features = official.get_image_embeddings(to_tensor(image)[None]).float()  # (1,256,64,64)
    emb_idx, pix_idx = sample_indices(features.numel(), (h, w))
    print(f"{variant} embedding: mean {features.mean():.4f} std {features.std():.4f}")
    arrays: dict[str, np.ndarray] = {
        "weight_seed": np.array(WEIGHT_SEED),
        "image_seed": np.array(IMAGE_SEED),
        "image_shape": np.array(IMAGE_SHAPE),
        "embedding_shape": np.array(features.shape),
        "embedding_index": emb_idx,
        "embedding_values": features.flatten().numpy()[emb_idx],
        "mask_pixel_index": pix_idx,
        "low_res_stride": np.array(LOW_RES_STRIDE),
    }
    for i, (coords, labels, box, multimask) in enumerate(PROMPTS):
        pts, labs = official_points(coords, labels, box)
        pts_t = torch.from_numpy(pts)[None, None]  # (1, 1, N, 2)
        labs_t = torch.from_numpy(labs)[None, None]  # (1, 1, N)
        with torch.inference_mode():
            low_res, iou = official.predict_masks(features, pts_t, labs_t, multimask, h, w)
            masks, _ = official.predict_masks(features, pts_t, labs_t, multimask, h, w, h, w)
        low_res, masks, iou = low_res[0, 0].numpy(), masks[0, 0].numpy(), iou[0, 0].numpy()
        print(f"prompt {i}: low-res logits mean {low_res.mean():.3f} std {low_res.std():.3f}, "
              f"iou {np.round(iou, 4).tolist()}")
        if coords is not None:
            arrays[f"coords_{i}"] = coords
            arrays[f"labels_{i}"] = labels
        if box is not None:
            arrays[f"box_{i}"] = box
        arrays[f"multimask_{i}"] = np.array(multimask)
        arrays[f"low_res_{i}"] = low_res[:, ::LOW_RES_STRIDE, ::LOW_RES_STRIDE].astype(np.float32)
        arrays[f"masks_{i}"] = masks.reshape(masks.shape[0], -1)[:, pix_idx].astype(np.float32)
        arrays[f"iou_{i}"] = iou.astype(np.float32)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path,
                        help="root of a yformer/EfficientSAM export (holds efficient_sam/)")
    parser.add_argument("--models", nargs="+", choices=sorted(OFFICIAL_ARGS), default=["vitt"])
    parser.add_argument("--out", type=Path, default=DATA, help="folder for the .npz files")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(args.official.resolve()))
    torch.manual_seed(0)
    for variant in args.models:
        make_golden(variant, args.out / f"golden_efficient_sam_{variant}.npz")


if __name__ == "__main__":
    main()
