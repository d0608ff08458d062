"""Golden outputs and state-dict manifests of the official FastSAM for
tests/models/test_yolov8_seg.py.

The official code (CASIA-IVA-Lab/FastSAM, which vendors Ultralytics 8.0.120 under
ultralytics/) cannot be imported as shipped here: its package __init__ pulls the hub, the
trainers and their dependencies, and torchvision is not installed (a CPU torch cannot load
the registry's CUDA build). OpenCV is the real one (a dependency of samdata). CI compares
against numbers stored by this script, run by hand on a checkout of the repository:

    .venv/bin/python -m tests.golden.make_fastsam --official /tmp/official/FastSAM
    # writes tests/data/golden_fastsam_s.npz and tests/data/fastsam_{s,x}.manifest.json

It registers the `ultralytics` package without running its __init__ and stands in for the
missing imports (`_install_shims`), builds the official `SegmentationModel` from
yolov8{s,x}-seg.yaml with nc=1 and writes each state dict's keys, shapes, dtypes and parameter
count. For fastsam_s it then loads the golden weights (`golden_state_dict`), runs the official
`FastSAMPredictor` unchanged (preprocessing, the fused network as AutoBackend runs it,
non_max_suppression, FastSAM's full-box adjustment, process_mask_native) with the everything-mode
settings (conf 0.4, iou 0.9, retina_masks) at imgsz 320 on a seeded 200x300 image of filled
shapes (`golden_image`, upscaled and padded to a 224x320 input), and stores the letterboxed
input, the raw network outputs (every box and score, samples of the mask coefficients and
prototypes) and the final boxes, scores and masks (packbits).

Golden weights: `seeded_state_dict(model, 0)` with three changes, all in `golden_state_dict`:
- `model.22.dfl.conv.weight` = 0..15, the fixed bin values of every official checkpoint;
- every BatchNorm's running mean / variance calibrated on the golden image (one train-mode
  forward of the official model, cumulative average, stored as float16 in the golden file). With
  the seeded statistics (mean ~0, variance ~1) the activations shrink layer after layer and the
  outputs do not depend on the image at all (the class logits of two different images agreed
  to 1e-4); calibrated, every layer is normalised and the image matters;
- the last conv of the box branch gets bias -BOX_BIN_SLOPE * bin and the last conv of the
  class branch bias CLASS_BIAS, per level. On P3 and P4 short distances are favoured and 45
  anchors of 1400 pass conf 0.4 (boxes of ~20-120 pixels); on P5 the distances stay long (boxes
  cover the whole input) and exactly one anchor passes (logit margins > 0.07 on either side),
  so FastSAM's whole-image adjustment runs on the one box the official code handles. Two of the
  P3/P4 detections have scores 2e-6 apart (below the ~3e-5 noise between the official fused
  Conv+BN and an unfused network), so their order is not part of what the file pins.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
GOLDEN = DATA / "golden_fastsam_s.npz"
MANIFEST = DATA / "{name}.manifest.json"
CONFIGS = {"fastsam_s": "yolov8s-seg.yaml", "fastsam_x": "yolov8x-seg.yaml"}

WEIGHT_SEED = 0
IMAGE_SEED = 0
IMAGE_SHAPE = (200, 300, 3)
IMGSZ = 320  # -> 213x320 resized, 224x320 input: resize and uneven padding (5 top, 6 bottom)
CONF = 0.4  # FastSAM's everything-mode settings (Inference.py)
IOU = 0.9
SAMPLE_SEED = 1
COEFF_SAMPLES = 4096  # mask-coefficient entries stored (of 32 x 1470)
PROTO_SAMPLES = 4096  # prototype entries stored (of 32 x 56 x 80)
BOX_BIN_SLOPE = (0.3, 0.3, 0.0)  # per level (P3, P4, P5): box-branch bias -slope * bin
CLASS_BIAS = (-2.2, -2.2, -1.7)  # per level: class-branch bias


def golden_image(seed: int = IMAGE_SEED, shape: tuple[int, ...] = IMAGE_SHAPE) -> np.ndarray:
    """Seeded uint8 HxWx3 RGB image: a colour gradient with six filled rectangles and discs and
    mild noise (std 4 levels)."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([40 + 120 * xx / w, 60 + 100 * yy / h, np.full((h, w), 90.0)], -1)
    for _ in range(6):
        color = rng.integers(0, 256, 3)
        if rng.random() < 0.5:
            y0, x0 = rng.integers(0, h - 20), rng.integers(0, w - 20)
            y1, x1 = y0 + rng.integers(15, h // 2), x0 + rng.integers(15, w // 2)
            img[y0:y1, x0:x1] = color
        else:
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(10, h // 3)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = color
    img += rng.normal(0.0, 4.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def batch_norm_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The BatchNorm prefixes of a state dict, in its order (`model.0.bn`, ...)."""
    return [k.removesuffix(".running_mean") for k in state if k.endswith(".running_mean")]


def golden_state_dict(
    model: nn.Module,
    bn_mean: np.ndarray | None,
    bn_var: np.ndarray | None,
    seed: int = WEIGHT_SEED,
) -> dict[str, torch.Tensor]:
    """The golden weights, keyed as `model.state_dict()` (see the module docstring):
    seeded, DFL bins 0..15, box / class biases set, BatchNorm statistics from `bn_mean` /
    `bn_var` (every BatchNorm's channels concatenated in state-dict order, as stored; None
    keeps the seeded statistics, the state that is calibrated)."""
    from models.checkpoint import seeded_state_dict

    state = seeded_state_dict(model, seed)
    state["model.22.dfl.conv.weight"] = torch.arange(16, dtype=torch.float32).view(1, 16, 1, 1)
    bins = torch.arange(16, dtype=torch.float32).repeat(4)  # 4 sides x 16 bins
    for level in range(3):
        state[f"model.22.cv2.{level}.2.bias"] = -BOX_BIN_SLOPE[level] * bins
        state[f"model.22.cv3.{level}.2.bias"] = torch.full((1,), CLASS_BIAS[level])
    if bn_mean is None or bn_var is None:
        return state
    start = 0
    for prefix in batch_norm_keys(state):
        n = state[f"{prefix}.running_mean"].numel()
        if start + n > len(bn_mean) or len(bn_mean) != len(bn_var):
            raise ValueError(f"expected BatchNorm statistics for {prefix}, got {len(bn_mean)}")
        state[f"{prefix}.running_mean"] = torch.from_numpy(bn_mean[start : start + n]).float()
        state[f"{prefix}.running_var"] = torch.from_numpy(bn_var[start : start + n]).float()
        start += n
    if start != len(bn_mean):
        raise ValueError(f"expected {start} BatchNorm channels, got {len(bn_mean)}")
    return state


def sample_indices(n_coeffs: int, n_protos: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded sorted flat indices into the mask coefficients and the prototypes."""
    rng = np.random.default_rng(SAMPLE_SEED)
    coeff = np.sort(rng.choice(n_coeffs, COEFF_SAMPLES, replace=False)).astype(np.int64)
    proto = np.sort(rng.choice(n_protos, PROTO_SAMPLES, replace=False)).astype(np.int64)
    return coeff, proto


# -- the official code (only for main) ----------------------------------------------------------


def _greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision.ops.nms: highest score first, drop boxes with IoU > threshold with a kept
    one; int64 indices in score order. Written here apart from models/ (a suppression mask
    over the score order)."""
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order]
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = torch.zeros(len(b), dtype=torch.bool)
    keep = []
    for a in range(len(b)):
        if suppressed[a]:
            continue
        keep.append(a)
        w = torch.minimum(b[a, 2], b[a + 1 :, 2]) - torch.maximum(b[a, 0], b[a + 1 :, 0])
        h = torch.minimum(b[a, 3], b[a + 1 :, 3]) - torch.maximum(b[a, 1], b[a + 1 :, 1])
        inter = w.clamp(min=0) * h.clamp(min=0)
        suppressed[a + 1 :] |= inter / (areas[a] + areas[a + 1 :] - inter) > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


class _Stub(types.ModuleType):
    """A module whose unknown attributes are functions that raise when called: enough for
    imports whose names the code paths used here never call."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise NotImplementedError(f"{self.__name__}.{name}: stand-in, not available")

        return unavailable


def _install_shims(official: Path) -> None:
    """Make `ultralytics` (vendored) and `fastsam` importable without their missing
    dependencies. The official model, predictor and post-processing code run untouched; only
    these imports are replaced:

    - `ultralytics` is registered as a bare package (its __init__ imports the hub, trainers and
      exporters, none used); its version string is set as the __init__ sets it;
    - cv2 is not replaced: the real OpenCV must be installed (LetterBox resizes with it);
    - torchvision: `ops.nms` as greedy NMS (`_greedy_nms`), `__version__` for a version check;
      `datasets.ImageFolder` is only a base class of a training dataset;
    - pkg_resources: `parse_version` (packaging's);
    - matplotlib, psutil, tqdm, scipy: imported by plotting and training code that never runs;
    - the predictor's logger integrations (ClearML, Comet, hub events, ...) are not added.
    """
    import importlib.machinery

    import cv2  # noqa: F401  (the real OpenCV: LetterBox's resize makes the golden input)
    import packaging.version

    def module(name: str, **attrs) -> types.ModuleType:
        mod = _Stub(name)
        mod.__dict__.update(attrs)
        mod.__path__ = []
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = mod
        parent, _, leaf = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], leaf, mod)
        return mod

    for name in ("torchvision", "pkg_resources"):
        try:
            __import__(name)
            raise RuntimeError(f"{name} is installed: this script assumes the stand-ins")
        except ImportError:
            pass
    module("torchvision", __version__="0.15.0")
    module("torchvision.ops", nms=_greedy_nms)
    module("torchvision.datasets", ImageFolder=type("ImageFolder", (), {}))
    module("torchvision.transforms")
    module("torchvision.transforms.functional")
    module("pkg_resources", parse_version=packaging.version.parse)
    for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.font_manager", "psutil",
                 "scipy", "scipy.ndimage"):
        module(name)
    module("tqdm", tqdm=type("tqdm", (), {}))
    os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="ultralytics-settings-")
    package = types.ModuleType("ultralytics")
    package.__path__ = [str(official / "ultralytics")]
    package.__version__ = "8.0.120"
    sys.modules["ultralytics"] = package
    sys.path.insert(0, str(official))
    import ultralytics.yolo  # noqa: F401  (imports nn.tasks in the order the package does)
    from ultralytics.yolo.utils import callbacks

    # Logger integrations (ClearML, Comet, hub events, ...): no part of the computation.
    callbacks.add_integration_callbacks = lambda instance: None


def _official_model(official: Path, name: str) -> nn.Module:
    from ultralytics.nn.tasks import SegmentationModel

    cfg = official / "ultralytics" / "models" / "v8" / CONFIGS[name]
    return SegmentationModel(str(cfg), nc=1, verbose=False).eval()


def write_manifest(official: Path, name: str, commit: str) -> None:
    """Keys, shapes, dtypes, parameter flags and count of the official state dict."""
    from models.yolov8_seg import OFFICIAL_FILES

    model = _official_model(official, name)
    params = {k for k, _ in model.named_parameters()}
    state = model.state_dict()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    manifest = {
        "model": name,
        "source": f"ultralytics.nn.tasks.SegmentationModel('{CONFIGS[name]}', nc=1) as vendored "
                  f"by CASIA-IVA-Lab/FastSAM at {commit[:12]}, torch {torch.__version__}",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "non_persistent_buffers": sorted({k for k, _ in model.named_buffers()} - set(state)),
        "norm_eps_by_class": {"torch.nn.modules.batchnorm.BatchNorm2d":
                              sorted({m.eps for m in bns})},
        "batch_norm_momentum": sorted({m.momentum for m in bns}),
        "checkpoint": OFFICIAL_FILES[name],
        "notes": "model.22.dfl.conv.weight is a parameter with requires_grad=False holding "
                 "0..15; the official predictor fuses Conv+BatchNorm after loading "
                 "(AutoBackend fuse=True), which changes no state-dict key of the file.",
        "keys": [[k, list(v.shape), str(v.dtype).removeprefix("torch."), k in params]
                 for k, v in state.items()],
    }
    path = Path(str(MANIFEST).format(name=name))
    path.write_text(json.dumps(manifest, indent=0) + "\n")
    print(f"wrote {path} ({manifest['num_parameters']} parameters, {len(state)} keys)")


def calibrate_batch_norm(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Every BatchNorm's running statistics from one train-mode forward of `x` (cumulative
    average from zero batches = the batch statistics), rounded to float16; the model's state is
    restored. Returns the means and variances, channels concatenated in state-dict order."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    state = model.state_dict()
    prefixes = batch_norm_keys(state)
    mean = torch.cat([state[f"{p}.running_mean"] for p in prefixes]).half().numpy()
    var = torch.cat([state[f"{p}.running_var"] for p in prefixes]).half().numpy()
    for m in bns:
        m.momentum = 0.03
    model.load_state_dict(saved)
    return mean, var


def make_golden(official: Path, out: Path) -> None:
    """Run the official FastSAM everything mode on the golden weights and image; write `out`."""
    from fastsam.predict import FastSAMPredictor
    from PIL import Image
    from ultralytics.yolo.data.augment import LetterBox

    model = _official_model(official, "fastsam_s")
    image = golden_image()
    # Calibrate on the image as the predictor will feed it (letterboxed, RGB, / 255)
    x = LetterBox(IMGSZ, auto=True, stride=32)(image=image[..., ::-1].copy())[..., ::-1]
    x = torch.from_numpy(x.transpose(2, 0, 1).copy()).float()[None] / 255
    model.load_state_dict(golden_state_dict(model, None, None), strict=True)
    bn_mean, bn_var = calibrate_batch_norm(model, x)
    model.load_state_dict(golden_state_dict(model, bn_mean, bn_var), strict=True)
    model.eval()

    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def record(module, inputs, output):
        calls.append((inputs[0].clone(), output[0].clone(), output[1][2].clone()))

    model.register_forward_hook(record)
    # FastSAM.predict's overrides for Inference.py's everything mode
    predictor = FastSAMPredictor(overrides={
        "task": "segment", "mode": "predict", "save": False, "verbose": False,
        "conf": CONF, "iou": IOU, "imgsz": IMGSZ, "retina_masks": True, "device": "cpu",
    })
    predictor.setup_model(model=model, verbose=False)  # AutoBackend: fuses Conv+BN
    results = predictor(Image.fromarray(image))
    if len(calls) != 1 or len(results) != 1:
        raise RuntimeError(f"expected one forward and one result, got {len(calls)}, {len(results)}")
    net_input, preds, protos = calls[0]
    boxes = results[0].boxes.data  # (N, 6): xyxy, conf, class
    masks = results[0].masks.data.bool().numpy()  # (N, H, W)
    h, w = IMAGE_SHAPE[:2]  # a whole-image box: (0, 0, 320 / g, 224 / g) clipped, to float32
    full = (boxes[:, :2] == 0).all(1) & (boxes[:, 2] > w - 1e-3) & (boxes[:, 3] > h - 1e-3)
    print(f"input {tuple(net_input.shape)}, preds {tuple(preds.shape)}, "
          f"protos {tuple(protos.shape)}; candidates > conf: {(preds[0, 4] > CONF).sum()}, "
          f"detections {len(boxes)}, whole-image boxes {int(full.sum())}, "
          f"mask pixels {masks.mean():.3f}")
    coeff_idx, proto_idx = sample_indices(preds[0, 5:].numel(), protos[0].numel())
    arrays = {
        "imgsz": np.array(IMGSZ),
        "conf": np.array(CONF),
        "iou": np.array(IOU),
        "bn_mean": bn_mean,
        "bn_var": bn_var,
        "input_uint8": (net_input[0] * 255).round().to(torch.uint8).numpy(),  # 3xhxw RGB
        "preds_shape": np.array(preds.shape),
        "protos_shape": np.array(protos.shape),
        "preds_box_score": preds[0, :5].numpy(),  # 5xA
        "coeff_index": coeff_idx,
        "coeff_values": preds[0, 5:].flatten().numpy()[coeff_idx],
        "proto_index": proto_idx,
        "proto_values": protos[0].flatten().numpy()[proto_idx],
        "boxes": boxes[:, :4].numpy(),
        "scores": boxes[:, 4].numpy(),
        "masks_packed": np.packbits(masks, axis=-1),
        "masks_shape": np.array(masks.shape),
    }
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path,
                        help="root of a CASIA-IVA-Lab/FastSAM checkout (holds fastsam/ and "
                             "ultralytics/)")
    args = parser.parse_args()
    official = args.official.resolve()
    sys.path.insert(0, str(ROOT))
    _install_shims(official)
    try:
        commit = subprocess.run(["git", "-C", str(official), "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = os.environ.get("FASTSAM_COMMIT", "unknown")
    torch.manual_seed(0)
    for name in CONFIGS:
        write_manifest(official, name, commit)
    make_golden(official, GOLDEN)


if __name__ == "__main__":
    main()
