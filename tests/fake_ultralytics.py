"""Checkpoint files built like Ultralytics ones, without Ultralytics installed.

An Ultralytics checkpoint pickles its module tree by class path (`ultralytics.nn.tasks.
SegmentationModel`, `ultralytics.nn.modules.conv.Conv`, ...). `fake_ultralytics()` registers
empty modules of those names in `sys.modules` holding plain `nn.Module` subclasses with the
official class names, so that `torch.save` writes exactly those paths; they are removed on exit,
so loading cannot import them back.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator

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
    "Segment": "ultralytics.nn.modules.head",
}


@contextlib.contextmanager
def fake_ultralytics() -> Iterator[dict[str, type[nn.Module]]]:
    """Yield {official class name: nn.Module subclass pickled under its official path}."""
    added: list[str] = []
    classes: dict[str, type[nn.Module]] = {}
    for name, path in CLASS_PATHS.items():
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            mod = ".".join(parts[:i])
            if mod not in sys.modules:
                sys.modules[mod] = types.ModuleType(mod)
                added.append(mod)
        cls = type(name, (nn.Module,), {"__module__": path})
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
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
