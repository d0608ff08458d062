"""Golden outputs of the official EfficientViT-SAM for tests/models/test_efficientvit_sam.py.

The official package cannot be installed here (its dependencies pull CUDA builds), so CI
compares against numbers stored by this script, run by hand on a checkout of
mit-han-lab/efficientvit:

    .venv/bin/python -m tests.golden.make_efficientvit_sam --official /tmp/official/efficientvit
    # writes tests/data/golden_efficientvit_sam_{l0,xl0}.npz

It builds the official model, loads OUR seeded weights (`golden_state_dict`) with strict=True,
runs the official `EfficientViTSamPredictor` on a seeded random image with point prompts and
stores a seeded subset of the embedding, subsampled low-res logits, full-size logits at
random pixels and the IoU predictions. The helpers above `main` are what the test uses to
rebuild the same weights, image and prompts without the official code.
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

WEIGHT_SEED = 0
IMAGE_SEED = 0
IMAGE_SHAPE = (480, 640, 3)
SAMPLE_SEED = 1  # which embedding entries / mask pixels are stored
EMBED_SAMPLES = 4096
MASK_PIXELS = 1024
LOW_RES_STRIDE = 4  # 256x256 low-res logits stored as 64x64
# Point prompts in original-image pixels (x, y) with labels (1 foreground, 0 background).
PROMPTS = (
    (np.array([[320.0, 240.0]]), np.array([1])),
    (np.array([[100.0, 200.0], [400.0, 300.0]]), np.array([1, 0])),
    (np.array([[50.5, 60.0], [600.0, 420.0], [310.0, 30.0]]), np.array([1, 1, 0])),
)


def golden_state_dict(model: nn.Module, seed: int = WEIGHT_SEED) -> dict[str, torch.Tensor]:
    """`seeded_state_dict(model, seed)` with usable BatchNorm statistics.

    The generic seeding draws running_var ~ 0.1 * N(0, 1): half the variances are negative and
    every BatchNorm output is NaN. Here running_mean ~ 0.1 * N(0, 1) and running_var ~
    U[0.5, 1.5) come from their own generator, so the golden weights do not depend on how the
    generic seeding treats buffers. Returns float32/int64 tensors keyed as `model.state_dict()`.
    """
    from models.checkpoint import seeded_state_dict

    state = seeded_state_dict(model, seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = (0.1 * torch.randn(value.shape, generator=gen)).to(value.dtype)
        elif key.endswith("running_var"):
            state[key] = (0.5 + torch.rand(value.shape, generator=gen)).to(value.dtype)
    return state


def golden_image(seed: int = IMAGE_SEED, shape: tuple[int, ...] = IMAGE_SHAPE) -> np.ndarray:
    """Seeded random uint8 HxWx3 RGB image."""
    return random_image(seed, shape)


def sample_indices(embedding_numel: int, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Seeded flat indices: EMBED_SAMPLES into the embedding, MASK_PIXELS into an HxW mask."""
    return seeded_indices(embedding_numel, hw, EMBED_SAMPLES, MASK_PIXELS, SAMPLE_SEED)


# -- the official code (only for main) ----------------------------------------------------------


def _install_shims() -> None:
    """Stand-ins for what the official package imports but this machine lacks. The SAM model
    code (models/efficientvit/*, models/nn/ops.py, norm.py, act.py, segment_anything) runs
    untouched; only these imports are replaced:

    - torchvision: Compose / ToTensor / Normalize as torchvision computes them for a uint8
      HxWx3 array, `resize` of a PIL image = PIL bilinear, and the two box ops that
      segment_anything's mask generator imports (unused here);
    - omegaconf: the DC-AE autoencoder module uses it in dataclass defaults at import time;
    - efficientvit.models.nn.triton_rms_norm: a Triton kernel for a norm SAM does not use
      (stubbing `triton` itself breaks torch, which probes for it);
    - efficientvit.apps.trainer.run_config: imported by the drop-path helper (training only),
      it drags in the trainer and timm.
    """
    from PIL import Image

    def module(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    class Compose:
        def __init__(self, transforms):
            self.transforms = transforms

        def __call__(self, x):
            for t in self.transforms:
                x = t(x)
            return x

    class ToTensor:
        def __call__(self, pic: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(pic.transpose(2, 0, 1))).contiguous()
            return t.to(torch.get_default_dtype()).div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = mean, std

        def __call__(self, t: torch.Tensor) -> torch.Tensor:
            mean = torch.as_tensor(self.mean, dtype=t.dtype).view(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=t.dtype).view(-1, 1, 1)
            return t.sub(mean).div(std)

    def resize(image: Image.Image, size) -> Image.Image:
        return image.resize((size[1], size[0]), Image.BILINEAR)

    def unused(*args, **kwargs):
        raise NotImplementedError("torchvision stand-in: not needed by the golden script")

    try:
        import torchvision.transforms  # noqa: F401
    except Exception:
        functional = module("torchvision.transforms.functional", to_pil_image=Image.fromarray,
                            resize=resize)
        transforms = module("torchvision.transforms", Compose=Compose, ToTensor=ToTensor,
                            Normalize=Normalize, functional=functional)
        boxes = module("torchvision.ops.boxes", batched_nms=unused, box_area=unused)
        ops = module("torchvision.ops", boxes=boxes)
        module("torchvision", transforms=transforms, ops=ops)
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        module("omegaconf", MISSING="???", OmegaConf=None)
    module("efficientvit.models.nn.triton_rms_norm", TritonRMSNorm2dFunc=None,
           __all__=["TritonRMSNorm2dFunc"])
    for name in ("efficientvit.apps", "efficientvit.apps.trainer"):
        module(name)
    module("efficientvit.apps.trainer.run_config",
           Scheduler=type("Scheduler", (), {"PROGRESS": 0}))


def make_golden(name: str, out: Path) -> None:
    """Run official EfficientViT-SAM `name` ("l0", "xl0", ...) and write its golden npz."""
    from efficientvit.models.efficientvit.sam import EfficientViTSamPredictor
    from efficientvit.sam_model_zoo import create_efficientvit_sam_model

    from models.efficientvit import BUILDERS

    ours = BUILDERS[f"efficientvit_sam_{name}"]()
    official = create_efficientvit_sam_model(f"efficientvit-sam-{name}", pretrained=False)
    official.load_state_dict(golden_state_dict(ours), strict=True)
    official.eval()

    image = golden_image()
    predictor = EfficientViTSamPredictor(official)
    predictor.set_image(image)
    features = predictor.features.float().cpu()  # (1, 256, 64, 64)
    emb_idx, pix_idx = sample_indices(features.numel(), image.shape[:2])
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
        arrays[f"coords_{i}"] = coords
        arrays[f"labels_{i}"] = labels
        arrays[f"low_res_{i}"] = low_res[:, ::LOW_RES_STRIDE, ::LOW_RES_STRIDE].astype(np.float32)
        arrays[f"masks_{i}"] = masks.reshape(masks.shape[0], -1)[:, pix_idx].astype(np.float32)
        arrays[f"iou_{i}"] = iou.astype(np.float32)
    np.savez_compressed(out, **arrays)
    print(f"{name}: wrote {out} ({out.stat().st_size // 1024} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path,
                        help="root of a mit-han-lab/efficientvit checkout (holds efficientvit/)")
    parser.add_argument("--models", nargs="+", default=["l0", "xl0"])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(args.official.resolve()))
    _install_shims()
    torch.manual_seed(0)
    for name in args.models:
        make_golden(name, DATA / f"golden_efficientvit_sam_{name}.npz")


if __name__ == "__main__":
    main()
