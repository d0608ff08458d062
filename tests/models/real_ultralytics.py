"""Write a FastSAM-like checkpoint with the real Ultralytics code, for
tests/models/test_ultralytics_real.py (run in a subprocess: the stand-ins below replace modules
in `sys.modules` for the whole process).

    python -m tests.models.real_ultralytics OUT_DIR fastsam_s

needs `ultralytics` installed (8.0.x, as FastSAM vendors, or a current 8.x; e.g.
`pip install --no-deps ultralytics==8.0.120`) and OpenCV. It imports Ultralytics' model code
without its package __init__ and with stand-ins for what a CPU machine lacks (torchvision and,
for 8.0.x, the plotting and training imports: `tests.golden.make_fastsam._install_shims`), then
runs the real code a training run ends with: builds `SegmentationModel(yolov8{s,x}-seg.yaml,
nc=1)`, attaches the classes and the argument namespace as the trainer does, makes the EMA copy
(`ModelEMA`), runs the validator's eval forward on it (and, in 8.0.x, its loss, which leaves
`model.criterion`), saves the trainer's checkpoint dict and runs the real `strip_optimizer` on
it. Writes OUT_DIR/NAME.pt (the released file), OUT_DIR/NAME.state.pt (the official module's
state dict, fp16, for comparison) and OUT_DIR/NAME.json ({"version": ...}).
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import json
import os
import re
import sys
import tempfile
import types
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import torch

SCALES = {"fastsam_s": "s", "fastsam_x": "x"}
INPUT = (2, 3, 256, 256)  # the validation batch the head's caches come from


def installed_version() -> tuple[Path, str] | None:
    """(site directory holding ultralytics/, its __version__) without importing it; None when
    it is not installed."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        return None
    init = Path(spec.origin)
    found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", init.read_text())
    if found is None:
        raise RuntimeError(f"expected __version__ in {init}, got none")
    return init.parent.parent, found.group(1)


def _torchvision_stand_in() -> None:
    """Current Ultralytics reads torchvision's version from its metadata at import: a bare
    package and its metadata in a temporary directory (the registry's torchvision is a CUDA
    build that a CPU torch cannot import)."""
    root = Path(tempfile.mkdtemp(prefix="torchvision-stand-in-"))
    meta = root / "torchvision-0.0.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.0.0\n")
    (root / "torchvision").mkdir()
    (root / "torchvision" / "__init__.py").write_text('__version__ = "0.0.0"\n')
    sys.path.append(str(root))


def _register_bare_package(site: Path, version: str) -> None:
    """`ultralytics` without running its __init__ (which imports the hub, trainers, ...)."""
    package = types.ModuleType("ultralytics")
    package.__path__ = [str(site / "ultralytics")]
    package.__spec__ = importlib.machinery.ModuleSpec("ultralytics", None, is_package=True)
    package.__version__ = version
    sys.modules["ultralytics"] = package


def _write_v80(site: Path, version: str, name: str, out: Path) -> torch.nn.Module:
    from tests.golden.make_fastsam import _install_shims

    _install_shims(site)
    sys.modules["ultralytics"].__version__ = version
    from ultralytics.nn.tasks import SegmentationModel
    from ultralytics.yolo.cfg import get_cfg
    from ultralytics.yolo.utils import DEFAULT_CFG
    from ultralytics.yolo.utils.torch_utils import ModelEMA, strip_optimizer

    cfg = site / "ultralytics" / "models" / "v8" / f"yolov8{SCALES[name]}-seg.yaml"
    model = SegmentationModel(str(cfg), nc=1, verbose=False)
    args = get_cfg(DEFAULT_CFG, {"task": "segment", "model": cfg.name, "imgsz": 1024})
    ema = _train_end(model, args, ModelEMA)
    # The 8.0.x validator adds the EMA model's loss during training: it sets model.criterion
    batch = {"img": torch.zeros(INPUT), "batch_idx": torch.zeros(1), "cls": torch.zeros(1, 1),
             "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
             "masks": torch.zeros(INPUT[0], INPUT[2] // 4, INPUT[3] // 4)}
    ema.ema.loss(batch, ema.ema(batch["img"]))
    torch.save({  # the trainer's save_model dict
        "epoch": 0, "best_fitness": 0.5, "model": deepcopy(model).half(),
        "ema": deepcopy(ema.ema).half(), "updates": ema.updates,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.01).state_dict(),
        "train_args": vars(args), "date": datetime.now().isoformat(), "version": version,
    }, out)
    # 8.0.x's strip_optimizer reads with torch.load's old default (weights_only=False)
    real_load = torch.load
    torch.load = functools.partial(real_load, weights_only=False)
    try:
        strip_optimizer(out)
    finally:
        torch.load = real_load
    return real_load(out, weights_only=False)["model"]


def _write_current(site: Path, version: str, name: str, out: Path) -> torch.nn.Module:
    _torchvision_stand_in()
    _register_bare_package(site, version)
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import SegmentationModel
    from ultralytics.utils import DEFAULT_CFG
    from ultralytics.utils.torch_utils import ModelEMA, strip_optimizer

    cfg = f"yolov8{SCALES[name]}-seg.yaml"
    model = SegmentationModel(cfg, nc=1, verbose=False)
    args = get_cfg(DEFAULT_CFG, {"task": "segment", "model": cfg, "imgsz": 1024})
    ema = _train_end(model, args, ModelEMA)
    saved = deepcopy(ema.ema).half()
    saved.criterion = None  # the current trainer drops it before saving
    torch.save({  # the current trainer's save_model dict, empty where it needs a real run
        "epoch": 0, "best_fitness": 0.5, "stopper": {"best_fitness": 0.5, "best_epoch": 0},
        "model": None, "ema": saved, "updates": ema.updates, "modelopt": None,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.01).state_dict(),
        "scaler": None, "train_args": vars(args), "train_metrics": {"fitness": 0.5},
        "train_results": {}, "date": datetime.now().astimezone().isoformat(),
        "version": version, "git": {}, "license": "AGPL-3.0", "docs": "",
    }, out)
    strip_optimizer(out)
    return torch.load(out, weights_only=False)["model"]


def _train_end(model: torch.nn.Module, args: object, ema_class: type) -> object:
    """What the trainer attaches, its EMA copy, and the validator's eval forward on it."""
    model.nc, model.names, model.args = 1, {0: "object"}, args
    ema = ema_class(model)
    ema.update_attr(model, include=["yaml", "nc", "args", "names", "stride", "class_weights"])
    ema.ema.eval()
    with torch.no_grad():
        ema.ema(torch.zeros(INPUT))
    return ema


def main() -> None:
    out_dir, name = Path(sys.argv[1]), sys.argv[2]
    found = installed_version()
    if found is None:
        raise SystemExit("expected ultralytics installed, got none")
    site, version = found
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-settings-"))
    torch.manual_seed(0)
    write = _write_v80 if version.startswith("8.0.") else _write_current
    released = write(site, version, name, out_dir / f"{name}.pt")
    torch.save(released.state_dict(), out_dir / f"{name}.state.pt")
    (out_dir / f"{name}.json").write_text(json.dumps({"version": version}))


if __name__ == "__main__":
    main()
