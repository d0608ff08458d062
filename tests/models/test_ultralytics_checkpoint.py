"""The restricted Ultralytics checkpoint reader: files pickled like the official ones load into
a plain state dict; files naming anything outside the allow-list are refused and run nothing."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import pytest
import torch
from torch import nn

from models.checkpoint import CheckpointError, read_checkpoint
from models.registry import build_model
from models.ultralytics_checkpoint import (
    ModuleRecord,
    StoredMethod,
    load_ultralytics_state_dict,
    restricted_pickle,
)
from tests.fake_ultralytics import (
    OFFICIAL_GLOBALS,
    checkpoint_dict,
    fake_ultralytics,
    new_module,
    official_tree,
    pickle_globals,
    released_checkpoint,
    save,
)


def _small_tree(classes: dict[str, type[nn.Module]], seed: int) -> nn.Module:
    """SegmentationModel -> Sequential(Conv, C2f(Conv, ModuleList(Bottleneck)), Upsample),
    with seeded weights and non-trivial batch-norm statistics."""
    torch.manual_seed(seed)

    def conv(c_in: int, c_out: int) -> nn.Module:
        return new_module(classes["Conv"], conv=nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False),
                          bn=nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03), act=nn.SiLU())

    bottleneck = new_module(classes["Bottleneck"], cv1=conv(4, 4), cv2=conv(4, 4))
    c2f = new_module(classes["C2f"], cv1=conv(8, 8), cv2=conv(12, 8),
                     m=nn.ModuleList([bottleneck]))
    tree = new_module(classes["SegmentationModel"],
                      model=nn.Sequential(conv(3, 8), c2f, nn.Upsample(None, 2, "nearest")))
    for m in tree.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(7)
    tree.stride = torch.tensor([8.0, 16.0, 32.0])  # plain attributes, as Ultralytics sets
    tree.names = {0: "object"}
    tree.yaml = {"nc": 1, "scales": {"s": [0.33, 0.5, 1024]}}
    tree.register_buffer("scratch", torch.zeros(2), persistent=False)
    return tree


def test_module_tree_becomes_the_state_dict(tmp_path):
    with fake_ultralytics() as classes:
        tree = _small_tree(classes, seed=0)
        path = tmp_path / "FastSAM-tiny.pt"
        save(checkpoint_dict(tree), path)
        expected = {k: v.clone() for k, v in tree.state_dict().items()}  # fp16, as saved
    state = load_ultralytics_state_dict(str(path))
    assert list(state) == list(expected)  # same keys, same order; no non-persistent buffer
    assert "scratch" not in state and "model.0.bn.num_batches_tracked" in state
    for key, value in expected.items():
        assert state[key].dtype == value.dtype == (
            torch.int64 if key.endswith("num_batches_tracked") else torch.float16), key
        assert torch.equal(state[key], value), key


def test_training_leftovers_load(tmp_path):
    """What a training loop leaves in a real file loads too: a numpy `best_fitness`, paths in
    `train_args`, the model's argument namespace (an Ultralytics SimpleNamespace)."""
    import pathlib

    import numpy as np

    with fake_ultralytics() as classes:
        tree = _small_tree(classes, seed=0)
        tree.args = classes["IterableSimpleNamespace"](imgsz=1024, save_dir="runs/segment/train")
        ckpt = checkpoint_dict(tree)
        ckpt["best_fitness"] = np.float64(0.6125)
        ckpt["train_args"]["project"] = pathlib.PurePosixPath("runs/segment")
        path = tmp_path / "trained.pt"
        save(ckpt, path)
        expected = tree.state_dict()["model.0.conv.weight"].clone()
    state = load_ultralytics_state_dict(str(path))
    assert torch.equal(state["model.0.conv.weight"], expected)


def test_ema_is_preferred_over_model(tmp_path):
    with fake_ultralytics() as classes:
        model, ema = _small_tree(classes, seed=0), _small_tree(classes, seed=1)
        path = tmp_path / "ckpt.pt"
        save(checkpoint_dict(model, ema=ema), path)
        want = ema.state_dict()["model.0.conv.weight"].clone()
    got = load_ultralytics_state_dict(str(path))["model.0.conv.weight"]
    assert torch.equal(got, want)


def test_read_checkpoint_with_the_loader_hashes_and_loads(tmp_path):
    with fake_ultralytics() as classes:
        path = tmp_path / "ckpt.pt"
        save(checkpoint_dict(_small_tree(classes, seed=0)), path)
    state, digest = read_checkpoint(path, loader=load_ultralytics_state_dict)
    assert len(digest) == 64 and "model.1.m.0.cv2.bn.weight" in state
    # The default (weights-only) loader refuses the same file: it is not a state dict.
    with pytest.raises(CheckpointError, match="weights-only"):
        read_checkpoint(path)


class _RunsACommand:
    """Unpickles as a call to os.system: what a malicious checkpoint would hold."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evaluates:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def test_a_file_calling_os_system_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    with fake_ultralytics() as classes:
        ckpt = checkpoint_dict(_small_tree(classes, seed=0))
        ckpt["train_args"]["hook"] = _RunsACommand(str(marker))
        path = tmp_path / "evil.pt"
        save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"refusing to load global '(posix|os)\.system'"):
        load_ultralytics_state_dict(str(path))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing"):
        read_checkpoint(path, loader=load_ultralytics_state_dict)
    assert not marker.exists()

    # The payload alone is refused too, and a plain unpickler would really have run it.
    bare = tmp_path / "bare.pt"
    save({"model": None, "hook": _RunsACommand(str(marker))}, bare)
    with pytest.raises(CheckpointError, match="refusing"):
        load_ultralytics_state_dict(str(bare))
    assert not marker.exists()
    torch.load(bare, weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")
def test_the_legacy_format_is_refused_before_unpickling(tmp_path):
    # torch's pre-1.6 format can make torch write files while loading (source patches)
    with fake_ultralytics() as classes:
        path = tmp_path / "old.pt"
        save(checkpoint_dict(_small_tree(classes, seed=0)), path, legacy=True)
    with pytest.raises(CheckpointError, match="expected a torch zip checkpoint"):
        load_ultralytics_state_dict(str(path))
    with open(path, "rb") as f, pytest.raises(CheckpointError, match="legacy torch format"):
        load_ultralytics_state_dict(f)


def _zip_checkpoint(path, pickled: bytes) -> None:
    """A torch zip file whose data.pkl is `pickled`, written by hand."""
    writer = torch._C.PyTorchFileWriter(str(path))
    writer.write_record("data.pkl", pickled, len(pickled))
    writer.write_record("version", b"3\n", 2)
    writer.write_end_of_file()


def test_an_allowed_function_cannot_be_modified(tmp_path):
    """BUILD on an allowed global would setattr on torch's own function (here its defaults,
    which would corrupt every later load in the process)."""
    before = torch._utils._rebuild_tensor_v2.__defaults__
    state = pickle.dumps((None, {"__defaults__": ({"neg": True},)}), protocol=2)[2:-1]
    pickled = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n" + state + b"b0}.")
    path = tmp_path / "tamper.pt"
    _zip_checkpoint(path, pickled)
    with pytest.raises(CheckpointError, match="refusing to modify an allowed function"):
        load_ultralytics_state_dict(str(path))
    assert torch._utils._rebuild_tensor_v2.__defaults__ == before
    benign = tmp_path / "ones.pt"
    torch.save({"w": torch.ones(3)}, benign)
    assert torch.equal(torch.load(benign, weights_only=True)["w"], torch.ones(3))


def test_eval_and_unknown_classes_are_refused(tmp_path):
    path = tmp_path / "eval.pt"
    save({"model": _Evaluates()}, path)
    with pytest.raises(CheckpointError, match=r"'builtins\.eval'"):
        load_ultralytics_state_dict(str(path))

    # An allowed class name under a module outside the allow-list is refused too.
    evil = type("Conv", (nn.Module,), {"__module__": "evil_package"})
    import sys
    import types

    sys.modules["evil_package"] = types.ModuleType("evil_package")
    sys.modules["evil_package"].Conv = evil
    try:
        save({"model": evil()}, path)
    finally:
        del sys.modules["evil_package"]
    with pytest.raises(CheckpointError, match=r"'evil_package\.Conv'"):
        load_ultralytics_state_dict(str(path))


def test_a_file_without_a_module_is_a_clear_error(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="expected a pickled module under 'ema' or 'model'"):
        load_ultralytics_state_dict(str(path))
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match="expected a torch zip checkpoint"):
        load_ultralytics_state_dict(str(path))


# -- files as Ultralytics releases write them ----------------------------------------------------


def _released_file(path, name: str, layout: str) -> dict[str, torch.Tensor]:
    """Write registry model `name` (seeded) as the released checkpoint of `layout`; return the
    state dict the file must load to (its fp16 values, as float32)."""
    model = build_model(name, seed=0)
    expected = {k: v.half().to(v.dtype) for k, v in model.state_dict().items()}
    with fake_ultralytics(layout) as classes:
        save(released_checkpoint(official_tree(model, classes, layout), layout), path)
    return expected


@pytest.mark.parametrize("layout", ["8.0", "8.4"])
@pytest.mark.parametrize("name", ["fastsam_s", pytest.param("fastsam_x", marks=pytest.mark.slow)])
def test_released_files_load_strictly(tmp_path, name, layout):
    """A file pickled as Ultralytics 8.0.x (FastSAM's) or current 8.x writes it (the globals of
    the real code's files, `OFFICIAL_GLOBALS`) loads strictly into the model, every tensor."""
    path = tmp_path / f"{name}-{layout}.pt"
    expected = _released_file(path, name, layout)
    assert pickle_globals(path) == OFFICIAL_GLOBALS[layout]
    state = build_model(name, checkpoint=path).state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


@pytest.mark.parametrize("layout", ["8.0", "8.4"])
def test_released_file_attributes_stay_inert(tmp_path, layout):
    """The two values that real files hold beyond classes and tensors: the head's cached input
    shape (a torch.Size) and, in 8.0.x, its stored `Detect.forward`, read as a name only."""
    path = tmp_path / "FastSAM-s.pt"
    _released_file(path, "fastsam_s", layout)
    with open(path, "rb") as f:
        with torch.serialization._open_zipfile_reader(f) as z:
            pickled = z.get_record(next(r for r in z.get_all_records()
                                        if r.endswith("data.pkl")))
    assert pickled[:2] == b"\x80\x02"  # torch's default protocol, as Ultralytics saves
    ckpt = torch.load(path, pickle_module=restricted_pickle, weights_only=False)
    head = ckpt["model"].attrs["_modules"]["model"].attrs["_modules"]["22"]
    assert head.class_path == "ultralytics.nn.modules.head.Segment"
    assert head.attrs["shape"] == torch.Size([16, 128, 128, 128])
    assert type(head.attrs["shape"]) is torch.Size
    if layout == "8.0":
        assert isinstance(head.attrs["detect"], StoredMethod)
        assert head.attrs["detect"].qualname == "ultralytics.nn.modules.head.Detect.forward"
        assert not callable(head.attrs["detect"])
        assert isinstance(ckpt["model"].attrs["criterion"], ModuleRecord)
    else:
        assert "detect" not in head.attrs and isinstance(ckpt["model"].attrs["args"], dict)


class _Reduces:
    """Unpickles as `fn(*args)`."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _refused(tmp_path, payload, match: str) -> None:
    """A released FastSAM-s-like file with `payload` in its train_args is refused."""
    with fake_ultralytics() as classes:
        ckpt = checkpoint_dict(_small_tree(classes, seed=0))
        ckpt["train_args"]["x"] = payload(classes) if callable(payload) else payload
        path = tmp_path / "hostile.pt"
        save(ckpt, path)
    with pytest.raises(CheckpointError, match=match):
        load_ultralytics_state_dict(str(path))


@pytest.mark.parametrize(
    "payload",
    [
        lambda c: _Reduces(getattr, c["Detect"], "__init__"),  # another name
        lambda c: _Reduces(getattr, c["Detect"], "__subclasses__"),
        lambda c: _Reduces(getattr, c["Conv"], "forward"),  # another Ultralytics class
        lambda c: _Reduces(getattr, c["Segment"], "forward"),
        lambda c: _Reduces(getattr, c["IterableSimpleNamespace"], "forward"),
        lambda c: _Reduces(getattr, OrderedDict, "fromkeys"),  # an allowed function
        lambda c: _Reduces(getattr, torch._utils._rebuild_tensor_v2, "__globals__"),
        lambda c: _Reduces(getattr, torch.Size, "__new__"),
        lambda c: _Reduces(getattr, new_module(c["Detect"]), "forward"),  # an instance
        lambda c: _Reduces(getattr, c["Detect"], "forward", None),  # with a default
    ],
)
def test_getattr_on_anything_else_is_refused(tmp_path, payload):
    _refused(tmp_path, payload, r"expected getattr\(<Ultralytics Detect class>, 'forward'\)")


@pytest.mark.parametrize(
    "args",
    [
        ("rm -rf /",),
        ((1, -2),),
        ((True, 2),),
        ((1.5,),),
        (("a",),),
        ((1,) * 9,),
        ([1, 2],),
        ((1,), (2,)),
        (),
        ((OrderedDict(),),),
    ],
)
def test_torch_size_of_anything_but_dims_is_refused(tmp_path, args):
    _refused(tmp_path, _Reduces(torch.Size, *args), r"expected torch\.Size\(<tuple of")


def test_torch_size_and_getattr_are_no_gadgets(tmp_path):
    """The new openings cannot be used as classes, modified, or have their results called."""
    detect_forward = (b"c__builtin__\ngetattr\ncultralytics.nn.modules.head\nDetect\n"
                      b"X\x07\x00\x00\x00forward\x86R")
    cases = {
        b"ctorch\nSize\n)\x81.": "unsafe or unreadable",  # NEWOBJ: Size as a class
        b"ctorch\nSize\n}b.": "refusing to modify an allowed function",  # BUILD on it
        b"c__builtin__\ngetattr\n}b.": "refusing to modify an allowed function",
        b"ctorch\nSize\n(K\x01t\x85R)R.": "not callable",  # calling the Size it made
        detect_forward + b")R.": "not callable",  # calling the stored method
        detect_forward + b"}b.": "refusing to modify a stored method",
        detect_forward + b")\x81.": "unsafe or unreadable",  # as a class
    }
    for i, (body, match) in enumerate(cases.items()):
        path = tmp_path / f"gadget{i}.pt"
        _zip_checkpoint(path, b"\x80\x02" + body)
        with pytest.raises(CheckpointError, match=match):
            load_ultralytics_state_dict(str(path))
