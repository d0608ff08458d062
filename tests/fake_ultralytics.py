"""Checkpoint files built like Ultralytics ones, without Ultralytics installed.

An Ultralytics checkpoint pickles its module tree by class path (`ultralytics.nn.tasks.
SegmentationModel`, `ultralytics.nn.modules.conv.Conv`, ...). `fake_ultralytics()` registers
empty modules of those names in `sys.modules` holding plain classes with the official names, so
that `torch.save` writes exactly those paths; they are removed on exit, so loading cannot import
them back.

`official_tree` and `released_checkpoint` go further and write a YOLOv8-seg file the way an
Ultralytics release does, for two layouts (`LAYOUTS`):

- "8.0": Ultralytics 8.0.x, the 8.0.120 that FastSAM vendors: `Segment.__init__` stores
  `self.detect = Detect.forward` (a function attribute, which torch's default pickle protocol 2
  writes as `getattr(Detect, "forward")`); the training arguments are an
  `ultralytics.yolo.utils.IterableSimpleNamespace` on the model; the validator's loss leaves
  `model.criterion` (a `v8SegmentationLoss` holding a `TaskAlignedAssigner`, a `BboxLoss`, a
  `BCEWithLogitsLoss` and the training `torch.device`), which `strip_optimizer` keeps.
- "8.4": current Ultralytics (8.4.190): no `detect` attribute, each layer also stores its
  parameter count `np`, `strip_optimizer` turns the arguments into a dict and the trainer drops
  the criterion; the file has more metadata keys.

In both, every eval forward (validation runs one before each save) caches the head's input
shape (`Detect.shape`, a `torch.Size`) and its anchor points and strides; `.half()` halves the
head's `stride`, `anchors` and `strides` too (Ultralytics' `BaseModel._apply`). `OFFICIAL_GLOBALS`
lists the globals such a file holds: the same sets that files written by the real code hold
(tests/models/test_ultralytics_real.py checks that where Ultralytics is installed).
"""

from __future__ import annotations

import contextlib
import pickletools
import sys
import types
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

CLASS_PATHS = {
    "SegmentationModel": "ultralytics.nn.tasks",
    "Conv": "ultralytics.nn.modules.conv",
    "Concat": "ultralytics.nn.modules.conv",
    "C2f": "ultralytics.nn.modules.block",
    "Bottleneck": "ultralytics.nn.modules.block",
    "SPPF": "ultralytics.nn.modules.block",
    "Proto": "ultralytics.nn.modules.block",
    "DFL": "ultralytics.nn.modules.block",
    "Detect": "ultralytics.nn.modules.head",
    "Segment": "ultralytics.nn.modules.head",
}


@dataclass(frozen=True)
class Layout:
    """What one Ultralytics release line writes into a YOLOv8-seg checkpoint."""

    version: str  # the file's `version` entry
    namespace_module: str  # where IterableSimpleNamespace lives
    stores_detect: bool  # Segment.detect = Detect.forward
    layer_param_counts: bool  # every layer of `model.model` stores `np`
    args_as_dict: bool  # strip_optimizer converts model.args to a dict
    criterion_modules: dict[str, str] | None  # {class: module} of the criterion left on the model


LAYOUTS = {
    "8.0": Layout(
        version="8.0.120",
        namespace_module="ultralytics.yolo.utils",
        stores_detect=True,
        layer_param_counts=False,
        args_as_dict=False,
        criterion_modules={
            "v8SegmentationLoss": "ultralytics.yolo.utils.loss",
            "BboxLoss": "ultralytics.yolo.utils.loss",
            "TaskAlignedAssigner": "ultralytics.yolo.utils.tal",
        },
    ),
    "8.4": Layout(
        version="8.4.190",
        namespace_module="ultralytics.utils",
        stores_detect=False,
        layer_param_counts=True,
        args_as_dict=True,
        criterion_modules=None,
    ),
}

_MODEL_GLOBALS = frozenset({
    "__builtin__.set", "collections.OrderedDict", "torch.FloatStorage", "torch.HalfStorage",
    "torch.LongStorage", "torch.Size", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_tensor_v2", "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.batchnorm.BatchNorm2d", "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.Sequential", "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.conv.ConvTranspose2d", "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample", "ultralytics.nn.modules.block.Bottleneck",
    "ultralytics.nn.modules.block.C2f", "ultralytics.nn.modules.block.DFL",
    "ultralytics.nn.modules.block.Proto", "ultralytics.nn.modules.block.SPPF",
    "ultralytics.nn.modules.conv.Concat", "ultralytics.nn.modules.conv.Conv",
    "ultralytics.nn.modules.head.Segment", "ultralytics.nn.tasks.SegmentationModel",
})
# The globals of a released (strip_optimizer'd) YOLOv8-seg file, as written in the pickle
# (protocol 2 spells builtins `__builtin__`); storages are torch's own, not pickle globals.
OFFICIAL_GLOBALS = {
    "8.0": _MODEL_GLOBALS | {
        "__builtin__.getattr", "ultralytics.nn.modules.head.Detect",
        "ultralytics.yolo.utils.IterableSimpleNamespace", "torch.device",
        "torch.nn.modules.loss.BCEWithLogitsLoss", "ultralytics.yolo.utils.loss.BboxLoss",
        "ultralytics.yolo.utils.loss.v8SegmentationLoss",
        "ultralytics.yolo.utils.tal.TaskAlignedAssigner",
    },
    "8.4": _MODEL_GLOBALS,
}

# `from` index of each layer of yolov8-seg.yaml (-1: the previous layer); the head reads 15, 18, 21
LAYER_FROM = [-1] * 11 + [[-1, 6], -1, -1, [-1, 4], -1, -1, [-1, 12], -1, -1, [-1, 9], -1,
                          [15, 18, 21]]
TRAIN_ARGS = {  # a few of the training arguments a real file carries (it has ~100)
    "task": "segment", "mode": "train", "model": "yolov8s-seg.yaml", "data": "sa.yaml",
    "epochs": 100, "imgsz": 1024, "batch": 16, "overlap_mask": True, "mask_ratio": 4,
    "save_dir": "runs/segment/train", "half": False, "device": None, "lr0": 0.01,
}


def _detect_forward(self, x):  # never called: only pickled by reference
    raise NotImplementedError("fake Ultralytics class")


@contextlib.contextmanager
def fake_ultralytics(layout: str = "8.0") -> Iterator[dict[str, type]]:
    """Yield {official class name: class pickled under its official path} for `layout`: the
    module classes (nn.Module subclasses; `Segment` subclasses `Detect`, whose `forward` pickles
    as `Detect.forward`), `IterableSimpleNamespace` (a SimpleNamespace) and, for 8.0, the
    criterion classes."""
    spec = LAYOUTS[layout]
    added: list[str] = []
    paths = dict(CLASS_PATHS, IterableSimpleNamespace=spec.namespace_module,
                 **(spec.criterion_modules or {}))
    classes: dict[str, type] = {}
    for name, path in paths.items():
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            mod = ".".join(parts[:i])
            if mod not in sys.modules:
                sys.modules[mod] = types.ModuleType(mod)
                added.append(mod)
        body: dict = {"__module__": path}
        if name == "Detect":
            forward = types.FunctionType(_detect_forward.__code__, {}, "forward")
            forward.__module__, forward.__qualname__ = path, "Detect.forward"
            body["forward"] = forward
        if name == "IterableSimpleNamespace":
            bases: tuple[type, ...] = (types.SimpleNamespace,)
        elif name == "v8SegmentationLoss":
            bases = (object,)  # a plain class in 8.0.x
        elif name == "Segment":
            bases = (classes["Detect"],)
        else:
            bases = (nn.Module,)
        cls = type(name, bases, body)
        setattr(sys.modules[path], name, cls)
        classes[name] = cls
    try:
        yield classes
    finally:
        for mod in reversed(added):
            sys.modules.pop(mod, None)


def new_module(cls: type[nn.Module], **children: nn.Module) -> nn.Module:
    """An instance of fake class `cls` with the given children (attributes set in order)."""
    module = cls()
    for name, child in children.items():
        setattr(module, name, child)
    return module


def rename_tree(
    module: nn.Module, class_for: Callable[[nn.Module], type[nn.Module] | None]
) -> nn.Module:
    """A copy of `module`'s tree in which every module m with `class_for(m)` not None is
    re-created as that class, with m's attributes (parameters, buffers, settings) and renamed
    children: how an Ultralytics module tree pickles, with our weights in it."""
    target = class_for(module)
    if target is None:
        copy = module.__class__.__new__(module.__class__)
    else:
        copy = target.__new__(target)
    state = dict(module.__dict__)
    state["_modules"] = {
        name: None if child is None else rename_tree(child, class_for)
        for name, child in module._modules.items()
    }
    copy.__dict__.update(state)
    return copy


def official_class_name(module: nn.Module) -> str | None:
    """Our YOLOv8-seg classes (models/yolov8_seg.py) -> the Ultralytics class names; None for
    torch.nn layers, which keep their classes."""
    if type(module).__module__ != "models.yolov8_seg":
        return None
    return {"YoloV8Seg": "SegmentationModel", "SegmentHead": "Segment"}.get(
        type(module).__name__, type(module).__name__)


def _class_path(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__name__}"


def _own_attributes(module: nn.Module, official: nn.Module, layout: Layout) -> dict:
    """The plain attributes the Ultralytics class of `official` sets in its __init__, with
    values taken from our `module`."""
    name = type(official).__name__
    if name == "C2f":
        return {"c": module.c}
    if name == "Bottleneck":
        return {"add": module.add}
    if name == "DFL":
        return {"c1": module.bins}
    if name == "Concat":
        return {"d": 1}
    if name == "SPPF" and layout.layer_param_counts:
        return {"n": 3, "add": False}
    return {}


def _head_caches(head: nn.Module, classes: dict[str, type], input_hw: tuple[int, int],
                 batch: int, layout: Layout) -> dict:
    """Segment's attributes, from our SegmentHead `head`: its settings and what an eval forward
    on a batch x 3 x input_hw input caches (`shape` of P3, anchor points and strides, as
    transposed views: 2xA and 1xA)."""
    hws = [(input_hw[0] // s, input_hw[1] // s) for s in (8, 16, 32)]
    points, strides = [], []
    for (h, w), s in zip(hws, (8, 16, 32), strict=True):
        gy, gx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        points.append(torch.stack((gx, gy), -1).view(-1, 2))
        strides.append(torch.full((h * w, 1), float(s)))
    nc, proto_hidden = head.nc, head.proto.cv1.conv.out_channels
    attrs = {"nc": nc, "nl": 3, "reg_max": 16, "no": nc + 64,
             "stride": torch.tensor([8.0, 16.0, 32.0]), "nm": 32, "npr": proto_hidden}
    if layout.stores_detect:
        attrs["detect"] = classes["Detect"].forward
    attrs.update(inplace=True, anchors=torch.cat(points).transpose(0, 1),
                 strides=torch.cat(strides).transpose(0, 1),
                 shape=torch.Size([batch, head.cv2[0][0].conv.in_channels, *hws[0]]))
    return attrs


def _criterion(classes: dict[str, type], args: object) -> object:
    """The 8.0.x loss object the validator leaves on the model (attributes as its __init__)."""
    criterion = classes["v8SegmentationLoss"]()
    criterion.__dict__.update(
        bce=nn.BCEWithLogitsLoss(reduction="none"), hyp=args,
        stride=torch.tensor([8.0, 16.0, 32.0]), nc=1, no=65, reg_max=16,
        device=torch.device("cuda", 0), use_dfl=True,
        assigner=new_module(classes["TaskAlignedAssigner"]),
        bbox_loss=new_module(classes["BboxLoss"]),
        proj=torch.arange(16, dtype=torch.float32), nm=32, overlap=True,
    )
    criterion.assigner.__dict__.update(topk=10, num_classes=1, bg_idx=1, alpha=0.5, beta=6.0,
                                       eps=1e-9, bs=16, n_max_boxes=40)  # (last batch's)
    criterion.bbox_loss.__dict__.update(reg_max=15, use_dfl=True)
    return criterion


def official_tree(model: nn.Module, classes: dict[str, type], layout: str = "8.0",
                  input_hw: tuple[int, int] = (1024, 1024), batch: int = 16) -> nn.Module:
    """Our YoloV8Seg `model` as the Ultralytics SegmentationModel of `layout` after training:
    official classes, our weights, each module's own plain attributes replaced by the ones the
    official class sets (layer index `i`, `from` index `f`, class path `type`, `np` in 8.4,
    C2f.c, ...), the head's settings and eval caches, and the model's `yaml`, `save`, `names`,
    `inplace`, `stride`, `nc`, `args` and (8.0) `criterion`. Float32, in eval mode; shares
    its parameters and buffers with `model`."""
    spec = LAYOUTS[layout]
    tree = rename_tree(model, lambda m: classes.get(official_class_name(m) or ""))
    for ours, official in zip(model.modules(), tree.modules(), strict=True):
        if official_class_name(ours) is not None:  # drop our own settings
            for key in [k for k in official.__dict__ if not k.startswith("_")]:
                del official.__dict__[key]
            official.training = False
            official.__dict__.update(_own_attributes(ours, official, spec))
    for index, (layer, source) in enumerate(zip(tree.model, LAYER_FROM, strict=True)):
        layer.__dict__.update(i=index, f=source, type=_class_path(layer))
        if spec.layer_param_counts:
            layer.np = sum(p.numel() for p in layer.parameters())
    tree.model[-1].__dict__.update(_head_caches(model.model[-1], classes, input_hw, batch, spec))
    act = nn.SiLU(inplace=True)  # Ultralytics' Conv shares one activation (a class attribute)
    for module in tree.modules():
        if isinstance(module, classes["Conv"]):
            module._modules["act"] = act
    args = classes["IterableSimpleNamespace"](**TRAIN_ARGS)
    layers = [[f, 1, type(m).__name__, []] for f, m in zip(LAYER_FROM, tree.model, strict=True)]
    tree.__dict__.update(
        yaml={"nc": 1, "scale": "s", "yaml_file": "yolov8s-seg.yaml", "ch": 3,
              "backbone": layers[:10], "head": layers[10:]},
        save=[4, 6, 9, 12, 15, 18, 21], names={0: "object"}, inplace=True,
        stride=torch.tensor([8.0, 16.0, 32.0]), nc=1, args=args,
    )
    if spec.criterion_modules is not None:
        tree.criterion = _criterion(classes, args)
    return tree


def released_checkpoint(tree: nn.Module, layout: str = "8.0") -> dict:
    """The dict `strip_optimizer` of `layout` saves around the trained `tree`: the module tree
    in fp16 (with the head's stride, anchors and strides, as Ultralytics' `_apply` does) and
    frozen, `ema`, `optimizer`, ... emptied, the training arguments as a dict."""
    spec = LAYOUTS[layout]
    tree.half()
    head = tree.model[-1]
    for key in ("stride", "anchors", "strides"):
        setattr(head, key, getattr(head, key).half())
    for p in tree.parameters():
        p.requires_grad = False
    if spec.args_as_dict:
        tree.args = dict(vars(tree.args))
    ckpt = {
        "epoch": -1, "best_fitness": None, "model": tree, "ema": None, "updates": None,
        "optimizer": None, "train_args": dict(TRAIN_ARGS), "date": "2023-06-20T00:00:00",
        "version": spec.version,
    }
    if layout == "8.4":  # and metadata up front, the trainer's newer keys emptied
        ckpt = {"date": "2026-11-01T00:00:00+00:00", "version": spec.version,
                "license": "AGPL-3.0 License", "docs": "https://docs.ultralytics.com",
                **ckpt, "stopper": None, "modelopt": None, "scaler": None,
                "train_metrics": {"metrics/mAP50(M)": 0.5, "fitness": 0.6},
                "train_results": {"epoch": [1.0, 2.0]}, "git": {"root": None}}
    return ckpt


def pickle_globals(path: str | Path) -> set[str]:
    """The globals a torch zip checkpoint's pickle names ('module.name', as written)."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    found = set()
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":  # protocol 4+: names are on the stack
            found.add("<STACK_GLOBAL>")
    return found


def checkpoint_dict(model: nn.Module, ema: nn.Module | None = None) -> dict:
    """The top level of an Ultralytics checkpoint around an fp16 module tree."""
    return {
        "epoch": -1,
        "best_fitness": None,
        "model": model.half(),
        "ema": None if ema is None else ema.half(),
        "updates": None,
        "optimizer": None,
        "train_args": {"task": "segment", "imgsz": 1024, "model": "yolov8s-seg.yaml"},
        "date": "2023-06-20T00:00:00",
        "version": "8.0.120",
    }


def save(obj: object, path, legacy: bool = False) -> None:
    """torch.save with its default pickle protocol (2), as Ultralytics saves."""
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
