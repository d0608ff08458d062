"""Golden outputs of the official MobileSAM for tests/models/test_mobile_sam.py.

The official package cannot be installed here (it imports timm, whose dependencies pull a CUDA
torchvision), so CI compares against numbers stored by this script, run by hand on a checkout
of ChaoningZhang/MobileSAM:

    .venv/bin/python -m tests.golden.make_mobile_sam --official /tmp/official/MobileSAM
    # writes tests/data/golden_mobile_sam.npz

It builds the official model (`build_sam_vit_t`), loads OUR seeded weights
(`golden_state_dict`: `seeded_state_dict(model, 0)`, attention biases scaled up) with
strict=True, refreshes TinyViT's bias cache with `eval()`, runs the official `SamPredictor` on a
seeded random image with point prompts and stores a seeded subset of the embedding, subsampled
low-res logits, full-size logits at random pixels and the IoU predictions. The helpers above
`main` are what the test uses to rebuild the same weights, image and prompts without the
official code.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.golden.common import random_image, seeded_indices

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
GOLDEN = DATA / "golden_mobile_sam.npz"

WEIGHT_SEED = 0
IMAGE_SEED = 0
IMAGE_SHAPE = (480, 640, 3)
SAMPLE_SEED = 1  # which embedding entries / mask pixels are stored
EMBED_SAMPLES = 4096
MASK_PIXELS = 1024
LOW_RES_STRIDE = 4  # 256x256 low-res logits stored as 64x64
# The seeded attention-bias tables (std ~0.14) barely move attention logits of std ~1: a stale
# or misordered table changed the embedding by only ~1e-5 in cosine. Scaled up they matter.
ATTENTION_BIAS_SCALE = 10.0
# Point prompts in original-image pixels (x, y) with labels (1 foreground, 0 background).
PROMPTS = (
    (np.array([[320.0, 240.0]]), np.array([1])),
    (np.array([[100.0, 200.0], [400.0, 300.0]]), np.array([1, 0])),
    (np.array([[50.5, 60.0], [600.0, 420.0], [310.0, 30.0]]), np.array([1, 1, 0])),
)


def golden_state_dict(model: nn.Module, seed: int = WEIGHT_SEED) -> dict[str, torch.Tensor]:
    """The golden weights, keyed as `model.state_dict()`: `seeded_state_dict(model, seed)`
    with every `attention_biases` table times ATTENTION_BIAS_SCALE (std ~1.4)."""
    from models.checkpoint import seeded_state_dict

    state = seeded_state_dict(model, seed)
    for key, value in state.items():
        if key.endswith("attention_biases"):
            state[key] = value * ATTENTION_BIAS_SCALE
    return state


def golden_image(seed: int = IMAGE_SEED, shape: tuple[int, ...] = IMAGE_SHAPE) -> np.ndarray:
    """Seeded random uint8 HxWx3 RGB image."""
    return random_image(seed, shape)


def sample_indices(embedding_numel: int, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Seeded sorted flat indices: EMBED_SAMPLES into the embedding, MASK_PIXELS into HxW."""
    return seeded_indices(embedding_numel, hw, EMBED_SAMPLES, MASK_PIXELS, SAMPLE_SEED)


# -- the official code (only for main) ----------------------------------------------------------


def _install_shims() -> None:
    """Stand-ins for imports the official package needs but this machine lacks. The model code
    (mobile_sam/modeling/*.py, predictor.py, utils/transforms.py) runs untouched; only these
    imports are replaced:

    - timm: `DropPath` (a base class; never instantiated, as the builder sets drop_path_rate
      0), `to_2tuple`, `trunc_normal_` (weight init, overwritten by the loaded state dict) and
      `register_model` (a registry decorator);
    - torchvision: `to_pil_image` and `resize` as torchvision computes them for a uint8 HxWx3
      array (PIL bilinear), and the two box ops the mask generator imports (unused here).
    """
    from PIL import Image

    def module(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    class DropPath(nn.Module):
        def __init__(self, drop_prob: float | None = None) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.drop_prob:
                raise NotImplementedError("timm stand-in: drop path is for training only")
            return x

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    def trunc_normal_(tensor: torch.Tensor, mean=0.0, std=1.0, a=-2.0, b=2.0) -> torch.Tensor:
        return nn.init.trunc_normal_(tensor, mean, std, a, b)

    def resize(image: Image.Image, size) -> Image.Image:
        return image.resize((size[1], size[0]), Image.BILINEAR)

    def unused(*args, **kwargs):
        raise NotImplementedError("torchvision stand-in: not needed by the golden script")

    try:
        import timm.models.layers  # noqa: F401
    except Exception:
        layers = module("timm.models.layers", DropPath=DropPath, to_2tuple=to_2tuple,
                        trunc_normal_=trunc_normal_)
        registry = module("timm.models.registry", register_model=lambda fn: fn)
        models = module("timm.models", layers=layers, registry=registry)
        module("timm", models=models)
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:
        functional = module("torchvision.transforms.functional", to_pil_image=Image.fromarray,
                            resize=resize)
        transforms = module("torchvision.transforms", functional=functional)
        boxes = module("torchvision.ops.boxes", batched_nms=unused, box_area=unused)
        ops = module("torchvision.ops", boxes=boxes)
        module("torchvision", transforms=transforms, ops=ops)


def make_golden(out: Path) -> None:
    """Run the official MobileSAM on the golden weights, image and prompts; write `out`."""
    from mobile_sam import SamPredictor, build_sam_vit_t

    from models.tiny_vit import build_mobile_sam

    official = build_sam_vit_t(checkpoint=None)  # already in eval mode, like the official load
    official.load_state_dict(golden_state_dict(build_mobile_sam()), strict=True)
    # TinyViT cached its attention biases in the builder's eval(), before the load: refresh.
    official.eval()

    image = golden_image()
    predictor = SamPredictor(official)
    predictor.set_image(image)
    features = predictor.features.float().cpu()  # (1, 256, 64, 64)
    emb_idx, pix_idx = sample_indices(features.numel(), image.shape[:2])
    print(f"embedding: mean {features.mean():.4f} std {features.std():.4f}")
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
    for i, (coords, labels) in enumerate(PROMPTS):
        masks, iou, low_res = predictor.predict(
            point_coords=coords, point_labels=labels, multimask_output=True, return_logits=True
        )
        print(f"prompt {i}: low-res logits mean {low_res.mean():.3f} std {low_res.std():.3f}, "
              f"iou {np.round(iou, 4).tolist()}")
        arrays[f"coords_{i}"] = coords
        arrays[f"labels_{i}"] = labels
        arrays[f"low_res_{i}"] = low_res[:, ::LOW_RES_STRIDE, ::LOW_RES_STRIDE].astype(np.float32)
        arrays[f"masks_{i}"] = masks.reshape(masks.shape[0], -1)[:, pix_idx].astype(np.float32)
        arrays[f"iou_{i}"] = iou.astype(np.float32)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path,
                        help="root of a ChaoningZhang/MobileSAM checkout (holds mobile_sam/)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(args.official.resolve()))
    _install_shims()
    torch.manual_seed(0)
    make_golden(GOLDEN)


if __name__ == "__main__":
    main()
