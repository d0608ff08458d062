"""Reading Ultralytics checkpoints (FastSAM-x.pt, FastSAM-s.pt) without running their pickles.

An Ultralytics checkpoint is a pickled dict whose `model` (or `ema`) entry is a whole module
tree: `SegmentationModel` -> `Sequential` of `Conv`, `C2f`, `SPPF`, ..., `Segment`, each holding
its fp16 parameters and buffers. `torch.load(weights_only=True)` refuses such a file, and a plain
`torch.load` would import Ultralytics and run whatever the file names. Here a restricted
unpickler admits only an allow-list of globals:

- the class names such files contain (Ultralytics modules, the torch.nn layers they are made of,
  Ultralytics' namespace of training arguments, and the loss object an 8.0.x trainer leaves on
  the model); each becomes an inert `ModuleRecord` that only stores its pickled attributes, so
  no constructor, `__setstate__` or import of the real class runs;
- torch's tensor and parameter rebuild functions, `collections.OrderedDict`, `builtins.set`,
  `_codecs.encode` for latin-1 only (how protocol 2 writes bytes), each behind a guard that
  checks its arguments;
- two values the module tree itself holds, each behind a guard that admits only their one
  shape: `torch.Size` of non-negative ints (the head's cached input shape, `Detect.shape`,
  set by every eval forward, so by validation before a trained model is saved), and
  `builtins.getattr` only as `getattr(<Ultralytics Detect>, "forward")` (8.0.x sets
  `Segment.detect = Detect.forward`; protocol 2 writes a method that way), which gives an
  inert `StoredMethod`, never the function;
- the few other values a training loop leaves in the dict (numpy scalars and dtypes, `pathlib`
  paths, a `torch.device`), as `OpaqueValue`s that keep nothing.

Any other global (`os.system`, `builtins.eval`, a class of another package) stops the load with
a `CheckpointError` naming it, before anything it names is called. The module tree is then
flattened into a plain state dict with the keys `nn.Module.state_dict()` would give, which the
model loads strictly.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import pickle
import types
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, BinaryIO

import torch

from .checkpoint import CheckpointError

# Ultralytics module classes of a YOLOv8-seg checkpoint (and its detection parent), and its
# training-argument namespace; the modules have moved between releases, so several paths.
_ULTRALYTICS_CLASSES = frozenset({
    "SegmentationModel", "DetectionModel", "Conv", "C2f", "Bottleneck", "SPPF", "Concat",
    "Segment", "Detect", "Proto", "DFL", "IterableSimpleNamespace",
})
_ULTRALYTICS_MODULES = frozenset({
    "ultralytics.nn.tasks",
    "ultralytics.nn.modules",
    "ultralytics.nn.modules.conv",
    "ultralytics.nn.modules.block",
    "ultralytics.nn.modules.head",
    "ultralytics.yolo.utils",
    "ultralytics.utils",
})
# The loss object (`model.criterion`) that Ultralytics 8.0.x sets on the model the first time
# it computes a loss; its validator does so on the EMA model every epoch, and neither its trainer
# nor `strip_optimizer` removes it, so trained 8.0.x files hold it (later releases drop it).
_ULTRALYTICS_CRITERION = frozenset({
    ("ultralytics.yolo.utils.loss", "v8SegmentationLoss"),
    ("ultralytics.yolo.utils.loss", "BboxLoss"),
    ("ultralytics.yolo.utils.tal", "TaskAlignedAssigner"),
})
# torch.nn layers the Ultralytics modules are built from (and the criterion's BCE loss).
_TORCH_NN_CLASSES = frozenset({
    "Conv2d", "ConvTranspose2d", "BatchNorm2d", "SiLU", "Identity", "Sequential", "ModuleList",
    "Upsample", "MaxPool2d", "BCEWithLogitsLoss",
})
# Methods an Ultralytics class stores on its instances, {owner class name: method names}: 8.0.x
# `Segment.__init__` (and `Pose`'s) sets `self.detect = Detect.forward`.
_STORED_METHODS: dict[str, frozenset[str]] = {"Detect": frozenset({"forward"})}
MAX_SIZE_DIMS = 8  # a torch.Size in a weights file is a tensor shape (the head's is BCHW)


class _Guarded:
    """A callable the pickle may call but not modify: BUILD on it (which would `setattr` on
    torch's own function, e.g. its defaults, for every later load in the process) is refused,
    and it refuses the arguments a weights file does not need (hooks, tensor metadata,
    parameter state)."""

    __slots__ = ("_fn", "_check")

    def __init__(self, fn: Any, check: Any) -> None:
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_check", check)

    def __call__(self, *args: Any) -> Any:
        self._check(args)
        return self._fn(*args)

    def __setattr__(self, name: str, value: Any) -> None:
        raise pickle.UnpicklingError("refusing to modify an allowed function")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("refusing to modify an allowed function")


def _empty(value: Any, what: str) -> None:
    if value:  # None, {} and OrderedDict() are what weights carry
        raise pickle.UnpicklingError(f"refusing {what} in a weights file, got {value!r}"[:200])


def _check_tensor_args(args: tuple) -> None:
    # (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
    if len(args) not in (6, 7):
        raise pickle.UnpicklingError(f"expected 6 or 7 tensor rebuild arguments, got {len(args)}")
    _empty(args[5], "backward hooks")
    if len(args) == 7:
        _empty(args[6], "tensor metadata")


def _check_parameter_args(args: tuple) -> None:
    # (data, requires_grad, backward_hooks[, state])
    if len(args) not in (3, 4):
        raise pickle.UnpicklingError(f"expected 3 or 4 parameter arguments, got {len(args)}")
    if not isinstance(args[0], torch.Tensor):
        raise pickle.UnpicklingError(f"expected a tensor, got {type(args[0]).__name__}")
    _empty(args[2], "backward hooks")
    if len(args) == 4:
        _empty(args[3], "parameter state")


def _no_check(args: tuple) -> None:
    if len(args) > 1:
        raise pickle.UnpicklingError(f"expected at most one argument, got {len(args)}")


def _check_latin1(args: tuple) -> None:
    # protocol 2 writes bytes (a numpy scalar's payload) as _codecs.encode(str, "latin1")
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"expected _codecs.encode(str, 'latin1'), got {args!r}"[:200])


def _check_size_args(args: tuple) -> None:
    # torch.Size pickles as torch.Size((d0, d1, ...)): one tuple of non-negative ints
    dims = args[0] if len(args) == 1 else None
    if (
        not isinstance(dims, tuple)
        or len(dims) > MAX_SIZE_DIMS
        or any(type(d) is not int or d < 0 for d in dims)
    ):
        raise pickle.UnpicklingError(
            f"expected torch.Size(<tuple of at most {MAX_SIZE_DIMS} non-negative ints>), "
            f"got torch.Size{args!r}"[:200]
        )


def _size(dims: tuple[int, ...]) -> torch.Size:
    return torch.Size(dims)


def _check_stored_method(args: tuple) -> None:
    # protocol 2 writes a method stored as an attribute as getattr(<class>, "<name>")
    owner, name = args if len(args) == 2 else (None, None)
    allowed = (
        isinstance(owner, type)
        and issubclass(owner, ModuleRecord)
        and not issubclass(owner, OpaqueValue)
        and owner.class_path.startswith("ultralytics.")
        and type(name) is str
        and name in _STORED_METHODS.get(owner.__name__, ())
    )
    if not allowed:
        shown = ", ".join(getattr(a, "class_path", None) or repr(a) for a in args)
        raise pickle.UnpicklingError(
            f"expected getattr(<Ultralytics Detect class>, 'forward'), got getattr({shown})"[:200]
        )


def _stored_method(owner: type[ModuleRecord], name: str) -> StoredMethod:
    return StoredMethod(f"{owner.class_path}.{name}")


_TORCH_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _Guarded(torch._utils._rebuild_tensor_v2,
                                                     _check_tensor_args),
    ("torch._utils", "_rebuild_parameter"): _Guarded(torch._utils._rebuild_parameter,
                                                     _check_parameter_args),
    ("torch._utils", "_rebuild_parameter_with_state"): _Guarded(
        torch._utils._rebuild_parameter_with_state, _check_parameter_args),
    ("collections", "OrderedDict"): _Guarded(OrderedDict, _no_check),
    ("builtins", "set"): _Guarded(set, _no_check),
    ("_codecs", "encode"): _Guarded(codecs.encode, _check_latin1),
    ("torch", "Size"): _Guarded(_size, _check_size_args),
    ("builtins", "getattr"): _Guarded(_stored_method, _check_stored_method),
}


class ModuleRecord:
    """An inert stand-in for a pickled module or namespace: keeps the class path and the
    pickled attributes (`attrs`), runs nothing."""

    class_path = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # SimpleNamespace reduces to cls()
        self.attrs: dict[str, Any] = dict(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, Mapping):
            raise pickle.UnpicklingError(
                f"expected a dict of attributes for {self.class_path}, got {type(state).__name__}"
            )
        self.attrs = dict(state)

    def __repr__(self) -> str:
        return f"ModuleRecord({self.class_path})"


class OpaqueValue(ModuleRecord):
    """An inert stand-in for a value the training loop left in the file that the weights do
    not need (a numpy float `best_fitness`, its dtype, a `pathlib` path in `train_args`):
    takes any arguments and state, keeps nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.attrs = {}

    def __setstate__(self, state: Any) -> None:
        self.attrs = {}


class StoredMethod:
    """An inert stand-in for a method an Ultralytics module stores as an attribute (8.0.x
    `Segment.detect = Detect.forward`): keeps only the dotted name (`qualname`); it cannot be
    called, and the pickle cannot set anything on it."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str) -> None:
        object.__setattr__(self, "qualname", qualname)

    def __setattr__(self, name: str, value: Any) -> None:
        raise pickle.UnpicklingError("refusing to modify a stored method")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("refusing to modify a stored method")

    def __repr__(self) -> str:
        return f"StoredMethod({self.qualname})"


# Training-loop values (module, name) that become OpaqueValue; numpy moved `core` to `_core`;
# the 8.0.x criterion holds the training device.
_OPAQUE = frozenset({
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"), ("torch", "device"),
})

_RECORD_TYPES: dict[tuple[str, str], type[ModuleRecord]] = {}


def _record_type(module: str, name: str, base: type[ModuleRecord] = ModuleRecord
                 ) -> type[ModuleRecord]:
    key = (module, name)
    if key not in _RECORD_TYPES:
        _RECORD_TYPES[key] = type(name, (base,), {"class_path": f"{module}.{name}"})
    return _RECORD_TYPES[key]


def _allowed_global(module: str, name: str) -> Any:
    """The object the unpickler may use for global `module.name`, or raise."""
    if (module, name) in _TORCH_FUNCTIONS:
        return _TORCH_FUNCTIONS[(module, name)]
    if module in _ULTRALYTICS_MODULES and name in _ULTRALYTICS_CLASSES:
        return _record_type(module, name)
    if (module, name) in _ULTRALYTICS_CRITERION:
        return _record_type(module, name)
    if module.startswith("torch.nn.modules.") and name in _TORCH_NN_CLASSES:
        return _record_type(module, name)
    if (module, name) in _OPAQUE:
        return _record_type(module, name, OpaqueValue)
    raise pickle.UnpicklingError(
        f"refusing to load global '{module}.{name}': not one of the classes an Ultralytics "
        f"YOLOv8-seg checkpoint holds"
    )


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves globals only through the allow-list."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name builtins the Python 2 way (`__builtin__.set`); map them as
        # pickle's own find_class does (those names mean nothing else).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return _allowed_global(module, name)


def _restricted_load(file: BinaryIO, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load takes a pickle *module*; this one only offers the restricted unpickler.
restricted_pickle = types.ModuleType("samdata_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _restricted_load
restricted_pickle.UnpicklingError = pickle.UnpicklingError


def module_state_dict(record: ModuleRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict `nn.Module.state_dict()` gives for the pickled module tree `record`:
    parameters and persistent buffers (None entries skipped), children depth first, in
    registration order."""
    if not isinstance(record, ModuleRecord):
        raise CheckpointError(
            f"expected a pickled module at '{prefix or '<root>'}', got {type(record).__name__}"
        )
    attrs = record.attrs
    out: dict[str, torch.Tensor] = {}
    for name, value in (attrs.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value.detach() if isinstance(value, torch.Tensor) else value
    skip = attrs.get("_non_persistent_buffers_set") or set()
    for name, value in (attrs.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in (attrs.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}."))
    bad = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"expected tensors in the module tree, got non-tensors at {bad[:5]}")
    return out


def _require_zip(source: str | BinaryIO) -> None:
    """Refuse anything but torch's zip format (every Ultralytics release writes it): the
    pre-1.6 format lets a pickle make torch write files (module source-change patches)."""
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        with open(source, "rb") as f:
            magic = f.read(4)
    else:
        pos = source.tell()
        magic = source.read(4)
        source.seek(pos)
    if magic != b"PK\x03\x04":
        raise CheckpointError(
            f"expected a torch zip checkpoint (as Ultralytics writes), got a file starting "
            f"{magic!r}: the legacy torch format is refused (it can write files while loading)"
        )


def load_ultralytics_state_dict(source: str | BinaryIO) -> dict[str, torch.Tensor]:
    """Path or binary file of an Ultralytics checkpoint -> plain state dict of its `ema` module
    when present, else of its `model` module (fp16 tensors as stored; keys as
    `model.state_dict()`: `model.0.conv.weight`, ..., `model.22.proto.cv1.conv.weight`).

    Raises CheckpointError for a file holding any global outside the allow-list (nothing it
    names is called) or without a module under `ema`/`model`."""
    _require_zip(source)
    try:
        obj = torch.load(source, map_location="cpu", pickle_module=restricted_pickle,
                         weights_only=False)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"unsafe or unreadable Ultralytics checkpoint: {e}") from e
    except Exception as e:
        raise CheckpointError(f"cannot read an Ultralytics checkpoint: {e}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"expected an Ultralytics checkpoint dict with a 'model' entry, "
            f"got {type(obj).__name__}"
        )
    for key in ("ema", "model"):
        value = obj.get(key)
        if isinstance(value, ModuleRecord) and not isinstance(value, OpaqueValue):
            return module_state_dict(obj[key])
    raise CheckpointError(
        f"expected a pickled module under 'ema' or 'model', got keys {sorted(map(str, obj))[:10]}"
    )
