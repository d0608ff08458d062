"""The official SAM 3 (facebookresearch/sam3, PyPI `sam3==0.1.4`), importable on this CPU-only
machine without its heavy dependencies, for the SAM 3 manifest script and parity tests.

The Makefile installs `sam3==0.1.4` with `--no-deps` (the test extra). What its image-model
modules import outside torch, numpy, PIL, `regex` and `ftfy` (samdata dependencies), and how it is
met here:
- timm (`vitdet.py`, `memory.py`): `DropPath` (identity in eval mode, as timm's), `Mlp` (timm's
  fc1 -> act -> fc2 with the same parameter names) and `trunc_normal_` (torch's).
- einops (`sam/rope.py`): the real package, in the test extra.
- iopath (`g_pathmgr.open`): the builtin `open`. huggingface_hub: a stand-in that fails if
  called (nothing is downloaded). pkg_resources (gone from setuptools >= 81): `resource_filename`
  joins the package folder and the resource name.
- torchvision: `ops.roi_align` (geometry encoder box pooling) and `ops.roi_align.RoIAlign`
  (imported by the decoder, built only with an interaction layer, which SAM 3 has not): a
  plain-loop reference written for the tests from torchvision's definition (bilinear samples
  per bin, `sampling_ratio=-1` -> ceil(roi size / bins), `aligned` shifts by half a pixel),
  independent of models/sam3; `transforms.ToTensor`, `Resize` and `Normalize` (the interactive
  predictor's SAM2Transforms builds them; only its coordinate transform and mask
  postprocessing run in `predict_inst`): the SAM 2 tests' stand-ins (make_sam2_official.py);
  `transforms.v2` for `Sam3Processor`: uint8 CxHxW -> bilinear
  antialiased resize in float, rounded back to uint8 (what torchvision does on a GPU, where the
  official processor runs, and on CPUs whose capability string lacks "AVX2", AVX512 ones
  included; only AVX2 CPUs take its native uint8 kernel, at most one level apart) -> float /
  255 -> (x - mean) / std.
- triton (the video model's kernels, imported by `model_builder`): decorators that return the
  function (never run).
- CUDA: the official decoder and position encoding build caches with `device="cuda"` and the
  geometry encoder calls `pin_memory()`; `cpu_only()` maps both to the CPU while the official
  code is built or run.
The model code itself is the official one, untouched. The interactive (SAM-1-task) parts:
`official_interactive_predictor` builds `SAM3InteractiveImagePredictor` on a `Sam3TrackerBase` at
reduced sizes, `official_sam3_interactive` the full model through `build_sam3_image_model`, and
`load_interactive_weights` copies `models.sam3.interactive.Sam3Interactive`'s weights into them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import math
import os
import sys
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _stub(name: str, **attrs: Any) -> types.ModuleType:
    module = sys.modules.get(name) or _AutoModule(name)
    module.__path__ = getattr(module, "__path__", [])
    module.__dict__.update(attrs)
    if getattr(module, "__spec__", None) is None:
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent and parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module


class _Placeholder:
    """What an absent package's unknown name stands for: a class that can be subclassed or
    named in a signature, and fails when built or called."""

    def __init__(self, *args, **kwargs) -> None:
        raise RuntimeError(f"{type(self).__qualname__} is a stand-in in the SAM 3 parity tests")


class _AutoModule(types.ModuleType):
    """A stand-in module whose unknown attributes are placeholders (the training and video
    code that `import sam3` pulls in names torchvision datasets and triton kernels at import
    time; the image model never runs them)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (_Placeholder,), {"__qualname__": f"{self.__name__}.{name}"})
        setattr(self, name, value)
        return value


class _AutoFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports any submodule of the absent packages in `roots` as an `_AutoModule`."""

    def __init__(self, roots: set[str]) -> None:
        self.roots = roots

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _AutoModule(spec.name)

    def exec_module(self, module) -> None:
        module.__path__ = []


def _unavailable(what: str):
    def call(*args, **kwargs):
        raise RuntimeError(f"{what} is a stand-in in the SAM 3 parity tests, never called")

    return call


class _DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class _Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int | None = None,
                 out_features: int | None = None, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer=None, bias: bool = True, drop: float = 0.0, **_: Any) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        drop1, drop2 = drop if isinstance(drop, tuple) else (drop, drop)  # timm's to_2tuple
        self.drop1 = nn.Dropout(drop1)
        self.norm = norm_layer(hidden_features) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


def _bilinear(feat: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """torchvision's roi_align bilinear sample of CxHxW `feat` at (y, x) (zero outside)."""
    c, h, w = feat.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return feat.new_zeros(c)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * feat[:, y0, x0] + hy * lx * feat[:, y0, x1]
            + ly * hx * feat[:, y1, x0] + ly * lx * feat[:, y1, x1])


def roi_align(input: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """Reference RoIAlign, a loop per box, bin and sample. input NxCxHxW; boxes a list of
    Kix4 XYXY (one per image) or Kx5 (batch index first) -> (sum K)xCxPhxPw."""
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    if isinstance(boxes, (list, tuple)):
        rows = [torch.cat([torch.full((len(b), 1), float(i), dtype=b.dtype), b], 1)
                for i, b in enumerate(boxes)]
        boxes = torch.cat(rows, 0) if rows else input.new_zeros(0, 5)
    out = input.new_zeros(len(boxes), input.shape[1], ph, pw)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(boxes.tolist()):
        feat = input[int(b)]
        x1, y1 = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        x2, y2 = x2 * spatial_scale - offset, y2 * spatial_scale - offset
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw)
        count = max(gh * gw, 1)
        for i in range(ph):
            for j in range(pw):
                acc = feat.new_zeros(feat.shape[0])
                for iy in range(gh):
                    y = y1 + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = x1 + j * bw + (ix + 0.5) * bw / gw
                        acc = acc + _bilinear(feat, y, x)
                out[k, :, i, j] = acc / count
    return out


class _RoIAlign(nn.Module):
    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int,
                 aligned: bool = False) -> None:
        super().__init__()
        self.args = (output_size, spatial_scale, sampling_ratio, aligned)

    def forward(self, input: torch.Tensor, rois) -> torch.Tensor:
        return roi_align(input, rois, *self.args)


class _Compose:
    def __init__(self, steps: list) -> None:
        self.steps = steps

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x


class _ToDtype:
    def __init__(self, dtype: torch.dtype, scale: bool = False) -> None:
        self.dtype, self.scale = dtype, scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.dtype:
            return x
        if self.scale and x.dtype == torch.uint8 and self.dtype.is_floating_point:
            return x.to(self.dtype) / 255.0
        if self.scale and x.dtype.is_floating_point and self.dtype == torch.uint8:
            return (x * 255.0).round().clamp(0, 255).to(torch.uint8)
        return x.to(self.dtype)


class _Resize:
    def __init__(self, size) -> None:
        self.size = [size, size] if isinstance(size, int) else list(size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if list(x.shape[-2:]) == self.size:
            return x
        dtype = x.dtype
        out = F.interpolate(x[None].float(), size=self.size, mode="bilinear",
                            align_corners=False, antialias=True)[0]
        return out.round().clamp(0, 255).to(dtype) if dtype == torch.uint8 else out


class _Normalize:
    def __init__(self, mean, std) -> None:
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return (x - mean) / std


def _to_image(image) -> torch.Tensor:
    """PIL or HxWxC array -> CxHxW tensor (torchvision's v2.functional.to_image)."""
    import numpy as np

    if isinstance(image, torch.Tensor):
        return image
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _is_absent(root: str) -> bool:
    """Not installed, or only a stand-in (bench/official.py's torchvision has no __file__)."""
    if root in sys.modules:
        return getattr(sys.modules[root], "__file__", None) is None
    return importlib.util.find_spec(root) is None


def _shim() -> None:
    absent = {root for root in ("torchvision", "triton", "timm", "decord", "psutil")
              if _is_absent(root)}
    finder = next((f for f in sys.meta_path if isinstance(f, _AutoFinder)), None)
    if finder is None:
        sys.meta_path.append(_AutoFinder(absent))
    else:
        finder.roots |= absent
    for name, module in list(sys.modules.items()):  # earlier stand-ins (bench/official.py's
        if name.split(".")[0] in absent and not hasattr(module, "__path__"):  # torchvision)
            module.__path__ = []  # are made packages, so that their submodules import
    if "timm" in absent:
        _stub("timm")
        _stub("timm.layers", DropPath=_DropPath, Mlp=_Mlp, trunc_normal_=nn.init.trunc_normal_)
    if _is_absent("iopath"):  # also over make_sam2_official.py's never-called stand-in
        _stub("iopath")
        _stub("iopath.common")
        _stub("iopath.common.file_io", g_pathmgr=types.SimpleNamespace(open=open))
    if _is_absent("huggingface_hub"):
        _stub("huggingface_hub", hf_hub_download=_unavailable("hf_hub_download"))
    if _is_absent("pkg_resources"):
        def resource_filename(package: str, resource: str) -> str:
            spec = importlib.util.find_spec(package)
            return os.path.join(os.path.dirname(spec.origin), resource)

        _stub("pkg_resources", resource_filename=resource_filename)
    if "triton" in absent:  # the video model's kernels (edt, connected components, nms)
        _stub("triton", jit=lambda fn=None, **k: fn if fn else (lambda f: f),
              autotune=lambda *a, **k: (lambda f: f), Config=lambda *a, **k: None,
              cdiv=lambda a, b: -(-a // b))
        _stub("triton.language", constexpr=int)
    if "torchvision" in absent:
        from bench.official import _shim_torchvision

        _shim_torchvision()  # the SAM 1 stand-in (box ops, PIL resize), where it is missing
        _stub("torchvision.ops", roi_align=roi_align)
        _stub("torchvision.ops.roi_align", RoIAlign=_RoIAlign, roi_align=roi_align)
        sys.modules["torchvision.ops"].roi_align = roi_align  # the function, as torchvision's
        _stub("torchvision.transforms.v2", Compose=_Compose, ToDtype=_ToDtype, Resize=_Resize,
              Normalize=_Normalize)
        _stub("torchvision.transforms.v2.functional", to_image=_to_image)
        # sam1_utils imports ToTensor, Resize and Normalize (the interactive predictor's
        # SAM2Transforms builds them): the SAM 2 tests' stand-ins, unless they are there
        from tests.golden.make_sam2_official import install_transform_stand_ins

        transforms = sys.modules["torchvision.transforms"]
        if not all(isinstance(vars(transforms).get(name), type)
                   and not issubclass(vars(transforms)[name], _Placeholder)
                   for name in ("ToTensor", "Resize", "Normalize")):
            install_transform_stand_ins(transforms)


@contextlib.contextmanager
def cpu_only() -> Iterator[None]:
    """While the official code is built or run: tensors it asks for on "cuda" are made on the
    CPU, and `pin_memory()` returns the tensor itself (no CUDA here)."""
    patched = {}

    def on_cpu(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return fn(*args, **kwargs)

        return call

    for name in ("arange", "zeros", "ones", "empty", "full", "tensor", "linspace"):
        patched[name] = getattr(torch, name)
        setattr(torch, name, on_cpu(patched[name]))
    pin = torch.Tensor.pin_memory
    torch.Tensor.pin_memory = lambda self, *a, **k: self
    try:
        yield
    finally:
        for name, fn in patched.items():
            setattr(torch, name, fn)
        torch.Tensor.pin_memory = pin


# Stand-ins that only the official package may see. Left in sys.modules, Ray's init takes the
# psutil one for the real psutil (ray/thirdparty_files, on sys.path only once ray is imported) and
# torch.compile takes the triton one for a GPU compiler: they are taken out once the official
# modules that import them are imported (those keep their reference).
_PRIVATE = frozenset({"triton", "psutil", "decord"})


@contextlib.contextmanager
def _stand_ins() -> Iterator[None]:
    _shim()
    try:
        yield
    finally:
        for finder in sys.meta_path:
            if isinstance(finder, _AutoFinder):
                finder.roots -= _PRIVATE
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] in _PRIVATE and getattr(module, "__file__", None) is None:
                del sys.modules[name]


def official_sam3_package() -> types.ModuleType:
    """`import sam3` with the stand-ins above. Raises ImportError without the package."""
    with _stand_ins():
        return importlib.import_module("sam3")


def official(module: str) -> types.ModuleType:
    """An official submodule, e.g. official("sam3.model.vitdet"), with the stand-ins."""
    with _stand_ins(), cpu_only():
        return importlib.import_module(module)


class _NoMemoryAttention(nn.Module):
    """Stands in for the tracker's memory-attention encoder in `official_interactive_predictor`:
    what `Sam3TrackerBase.__init__` reads of it (`d_model`, `decoder` None); the image predictor
    never runs it."""

    decoder = None

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model


def official_interactive_predictor(image_size: int, d_model: int):
    """The official `SAM3InteractiveImagePredictor` on a `Sam3TrackerBase` with `build_tracker`'s
    SAM settings (dynamic multimask 0.05 / 0.98) at these sizes, random init, eval mode: its
    SAM heads (`_build_sam_heads`: prompt encoder, mask decoder, `no_mem_embed`) are the
    official ones; the memory modules, which the image predictor never runs, are left out
    (`_NoMemoryAttention`, no memory encoder). `_bb_feat_sizes` (fixed at 1008 px in the
    official code) is set for image_size."""
    base = official("sam3.model.sam3_tracker_base")
    task = official("sam3.model.sam1_task_predictor")
    with cpu_only():
        tracker = base.Sam3TrackerBase(
            backbone=None, transformer=_NoMemoryAttention(d_model), maskmem_backbone=None,
            image_size=image_size, backbone_stride=14, multimask_output_in_sam=True,
            multimask_output_for_tracking=True, multimask_min_pt_num=0, multimask_max_pt_num=1,
            sam_mask_decoder_extra_args={"dynamic_multimask_via_stability": True,
                                         "dynamic_multimask_stability_delta": 0.05,
                                         "dynamic_multimask_stability_thresh": 0.98})
        predictor = task.SAM3InteractiveImagePredictor(tracker.eval())
    grid = image_size // 14
    predictor._bb_feat_sizes = [(4 * grid, 4 * grid), (2 * grid, 2 * grid), (grid, grid)]
    return predictor.eval()


def official_sam3_interactive(bpe_path: str) -> torch.nn.Module:
    """The official full-size image model with its SAM-1-task predictor, built by the official
    `build_sam3_image_model(enable_inst_interactivity=True)` (random init, no file, eval, CPU)."""
    mb = official("sam3.model_builder")
    with cpu_only():
        return mb.build_sam3_image_model(
            bpe_path=bpe_path, device="cpu", eval_mode=True, checkpoint_path=None,
            load_from_HF=False, enable_segmentation=True, enable_inst_interactivity=True)


def load_interactive_weights(official_model: torch.nn.Module,
                             state: dict[str, torch.Tensor]) -> list[str]:
    """Copy `Sam3Interactive`'s state dict into an official `Sam3Image` with its interactive
    predictor, renaming as the official `_load_checkpoint` renames the file's keys
    (`detector.` dropped, `tracker.` -> `inst_interactive_predictor.model.`). Every one of our
    keys must land on an official tensor of its shape; returns the official keys left as they
    were (the parts the interactive path does not run)."""
    from models.sam3.interactive import to_file_key

    theirs = official_model.state_dict()
    mapped = {}
    for k, v in state.items():
        file_key = to_file_key(k)
        name = (file_key.removeprefix("detector.") if file_key.startswith("detector.")
                else "inst_interactive_predictor.model." + file_key.removeprefix("tracker."))
        if name not in theirs or theirs[name].shape != v.shape:
            raise KeyError(f"expected official key {name} of shape {tuple(v.shape)}, got "
                           f"{tuple(theirs[name].shape) if name in theirs else 'none'}")
        mapped[name] = v
    _, unexpected = official_model.load_state_dict(mapped, strict=False)
    assert not unexpected, unexpected
    return sorted(set(theirs) - set(mapped))


def official_sam3(bpe_path: str, tiny: bool = False,
                  interactive: bool = False) -> torch.nn.Module:
    """The official `Sam3Image` composed as `build_sam3_image_model` does (vision neck with its
    SAM 2 branch, as the released file's detector part), random init, eval mode; tiny: the
    sizes of registry model `sam3_tiny_test` (models/sam3/builders.py), else full size.
    interactive (tiny only): with the SAM-1-task predictor (`official_interactive_predictor`)
    at the sizes of `sam3_interactive_tiny_test` (models/sam3/interactive.py)."""
    mb = official("sam3.model_builder")
    if not tiny:
        if interactive:
            return official_sam3_interactive(bpe_path)
        from tests.golden.make_sam3_manifest import official_detector

        return official_detector(bpe_path)
    inst_predictor = official_interactive_predictor(168, 32) if interactive else None
    vitdet, necks, pe = (official(f"sam3.model.{m}") for m in ("vitdet", "necks",
                                                                 "position_encoding"))
    text_ve, tok, enc, dec = (official(f"sam3.model.{m}") for m in (
        "text_encoder_ve", "tokenizer_ve", "encoder", "decoder"))
    geo, seg, misc, vl = (official(f"sam3.model.{m}") for m in (
        "geometry_encoders", "maskformer_segmentation", "model_misc", "vl_combiner"))
    d, heads, ffn = 32, 4, 64

    def attention(batch_first: bool = False, dropout: float = 0.1):
        return misc.MultiheadAttentionWrapper(num_heads=heads, dropout=dropout, embed_dim=d,
                                              batch_first=batch_first)

    with cpu_only():
        trunk = vitdet.ViT(
            img_size=168, pretrain_img_size=112, patch_size=14, embed_dim=64, depth=4,
            num_heads=4, mlp_ratio=4.625, norm_layer="LayerNorm", drop_path_rate=0.1,
            qkv_bias=True, use_abs_pos=True, tile_abs_pos=True, global_att_blocks=(1, 3),
            rel_pos_blocks=(), use_rope=True, use_interp_rope=True, window_size=8,
            pretrain_use_cls_token=True, retain_cls_token=False, ln_pre=True, ln_post=False,
            return_interm_layers=False, bias_patch_embed=False)
        position = pe.PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None,
                                            temperature=10000)
        neck = necks.Sam3DualViTDetNeck(position_encoding=position, d_model=d,
                                        scale_factors=[4.0, 2.0, 1.0, 0.5], trunk=trunk,
                                        add_sam2_neck=True)
        text = text_ve.VETextEncoder(tokenizer=tok.SimpleTokenizer(bpe_path=bpe_path),
                                     d_model=d, width=64, heads=4, layers=2,
                                     vocab_size=1024)
        backbone = vl.SAM3VLBackbone(visual=neck, text=text, scalp=1)
        enc_layer = enc.TransformerEncoderLayer(
            activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.1,
            pos_enc_at_attn=True, pos_enc_at_cross_attn_keys=False,
            pos_enc_at_cross_attn_queries=False, pre_norm=True,
            self_attention=attention(batch_first=True),
            cross_attention=attention(batch_first=True))
        encoder = enc.TransformerEncoderFusion(
            layer=enc_layer, num_layers=2, d_model=d, num_feature_levels=1, frozen=False,
            use_act_checkpoint=False, add_pooled_text_to_img_feat=False,
            pool_text_with_mask=True)
        dec_layer = dec.TransformerDecoderLayer(
            activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.1,
            cross_attention=attention(), n_heads=heads, use_text_cross_attention=True)
        decoder = dec.TransformerDecoder(
            layer=dec_layer, num_layers=2, num_queries=20, return_intermediate=True,
            box_refine=True, num_o2m_queries=0, dac=True, boxRPB="log", d_model=d,
            frozen=False, interaction_layer=None, dac_use_selfatt_ln=True, resolution=168,
            stride=14, use_act_checkpoint=False, presence_token=True)
        transformer = misc.TransformerWrapper(encoder=encoder, decoder=decoder, d_model=d)
        scoring = misc.DotProductScoring(d_model=d, d_proj=d, prompt_mlp=misc.MLP(
            input_dim=d, hidden_dim=ffn, output_dim=d, num_layers=2, dropout=0.1,
            residual=True, out_norm=torch.nn.LayerNorm(d)))
        head = seg.UniversalSegmentationHead(
            hidden_dim=d, upsampling_stages=3, aux_masks=False, presence_head=False,
            dot_product_scorer=None, act_ckpt=False,
            cross_attend_prompt=attention(dropout=0.0),
            pixel_decoder=seg.PixelDecoder(num_upsampling_stages=3,
                                           interpolation_mode="nearest", hidden_dim=d))
        geo_layer = enc.TransformerEncoderLayer(
            activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.1,
            pos_enc_at_attn=False, pre_norm=True, self_attention=attention(),
            pos_enc_at_cross_attn_queries=False, pos_enc_at_cross_attn_keys=True,
            cross_attention=attention())
        geometry = geo.SequenceGeometryEncoder(
            pos_enc=pe.PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None,
                                             temperature=10000),
            encode_boxes_as_points=False, points_direct_project=True, points_pool=True,
            points_pos_enc=True, boxes_direct_project=True, boxes_pool=True,
            boxes_pos_enc=True, d_model=d, num_layers=1, layer=geo_layer,
            use_act_ckpt=False, add_cls=True, add_post_encode_proj=True)
        model = mb._create_sam3_model(backbone, transformer, geometry, head, scoring,
                                      inst_predictor, True)
    return model.eval()


def official_processor(model: torch.nn.Module, resolution: int):
    """The official `Sam3Processor` (set_image / set_text_prompt) on `model`, on the CPU."""
    processor_module = official("sam3.model.sam3_image_processor")
    with cpu_only():
        return processor_module.Sam3Processor(model, resolution=resolution, device="cpu",
                                              confidence_threshold=0.5)
