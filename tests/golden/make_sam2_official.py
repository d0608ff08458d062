"""The official SAM 2.1 (`SAM2Base` of facebookresearch/sam2, PyPI `sam2==1.1.0`) built from
its own config files, for the manifest script (make_sam2_manifest.py) and the parity tests.

The PyPI `sam2==1.1.0` sdist holds the `sam2` package byte for byte as the official repository
(checked against facebookresearch/sam2 at 2b90b9f, `diff -r` of `sam2/`); it installs with
`SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation sam2==1.1.0` (the CUDA extension is
only the optional hole filling, off in the image predictor).

What the package imports outside torch and numpy, and how it is met here without installing it:
- hydra (`sam2/__init__.py` initialises hydra's config search path; `build_sam.py` composes the
  configs with hydra and omegaconf): we do not use `build_sam2`. `official_sam2` reads the same
  yaml file (`sam2/configs/sam2.1/sam2.1_hiera_*.yaml`) with PyYAML and instantiates each
  `_target_` class with its arguments, adding the three overrides `build_sam2` applies by
  default (`apply_postprocessing=True`: dynamic multimask via stability, delta 0.05, threshold
  0.98). `hydra` itself is a two-name stand-in so that `import sam2` works.
- iopath (`hieradet.py`, only to read a pretrained trunk file, never here) and tqdm (video
  frame loading in `utils/misc.py`): stand-ins that fail if ever called.
- torchvision: `sam2.utils.transforms` uses `ToTensor`, `Resize((S, S))` and `Normalize`
  (scripted), the mask generator `batched_nms` and `box_area`. Where torchvision is missing we
  take the stand-in of bench/official.py (box ops, PIL resize for SAM 1) and add the three
  transforms, doing what torchvision >= 0.17 does to a tensor: uint8 HxWxC -> float32 CxHxW / 255;
  `interpolate(bilinear, align_corners=False, antialias=True)` to (S, S) (no-op at that size);
  `(x - mean) / std` per channel.
The model code itself is the official one, untouched.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

# What `build_sam2(..., apply_postprocessing=True)` (the image predictor's builder) overrides
POSTPROCESSING_DECODER_ARGS = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}
CONFIGS = {  # registry name -> official config file
    "sam2_1_hiera_t": "sam2.1_hiera_t.yaml",
    "sam2_1_hiera_s": "sam2.1_hiera_s.yaml",
    "sam2_1_hiera_b_plus": "sam2.1_hiera_b+.yaml",
    "sam2_1_hiera_l": "sam2.1_hiera_l.yaml",
}


def _stub(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    # a spec, so that importlib.util.find_spec(name) works (torch._dynamo asks for tqdm's)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = module
    return module


def _unavailable(what: str):
    def call(*args, **kwargs):
        raise RuntimeError(f"{what} is a stand-in in the parity tests, not meant to be called")

    return call


def _shim_hydra_iopath_tqdm() -> None:
    try:
        import hydra  # noqa: F401
    except ImportError:

        class GlobalHydra:
            @staticmethod
            def instance() -> GlobalHydra:
                return GlobalHydra()

            def is_initialized(self) -> bool:
                return True  # so that sam2/__init__.py initialises nothing

        hydra = _stub("hydra", initialize_config_module=_unavailable("hydra"))
        hydra.core = _stub("hydra.core")
        hydra.core.global_hydra = _stub("hydra.core.global_hydra", GlobalHydra=GlobalHydra)
    try:
        import iopath  # noqa: F401
    except ImportError:
        _stub("iopath")
        _stub("iopath.common")
        _stub("iopath.common.file_io", g_pathmgr=types.SimpleNamespace(
            open=_unavailable("iopath.g_pathmgr.open")))
    try:
        import tqdm  # noqa: F401
    except ImportError:
        _stub("tqdm", tqdm=_unavailable("tqdm"))


def _shim_torchvision_transforms() -> None:
    try:
        from torchvision.transforms import Normalize, Resize, ToTensor  # noqa: F401

        return
    except ImportError:
        pass
    from bench.official import official as segment_anything

    segment_anything()  # registers bench/official.py's torchvision stand-in where it is missing
    install_transform_stand_ins(sys.modules["torchvision.transforms"])


def install_transform_stand_ins(transforms: types.ModuleType) -> None:
    """Set `ToTensor`, `Resize((S, S))` and `Normalize` of the torchvision stand-in module
    `transforms` (what SAM2Transforms builds; also SAM 3's, tests/golden/make_sam3_official.py)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ToTensor:
        def __call__(self, pic):
            return torch.from_numpy(pic.transpose(2, 0, 1)).contiguous().float().div(255)

    class Resize(nn.Module):
        def __init__(self, size: tuple[int, int]) -> None:
            super().__init__()
            self.size = [int(size[0]), int(size[1])]

        def forward(self, img: torch.Tensor) -> torch.Tensor:
            if img.shape[-2] == self.size[0] and img.shape[-1] == self.size[1]:
                return img
            return F.interpolate(img[None], size=self.size, mode="bilinear",
                                 align_corners=False, antialias=True)[0]

    class Normalize(nn.Module):
        def __init__(self, mean: list[float], std: list[float]) -> None:
            super().__init__()
            # made here, not in forward: scripted under make_sam3_official's cpu_only(),
            # torch.tensor is a Python wrapper that TorchScript cannot compile
            self.mean = torch.tensor(mean)[:, None, None]  # plain attributes: no state
            self.std = torch.tensor(std)[:, None, None]

        def forward(self, img: torch.Tensor) -> torch.Tensor:
            mean = self.mean.to(dtype=img.dtype, device=img.device)
            std = self.std.to(dtype=img.dtype, device=img.device)
            return (img - mean) / std

    transforms.ToTensor, transforms.Resize, transforms.Normalize = ToTensor, Resize, Normalize


def official_sam2_package() -> types.ModuleType:
    """`import sam2` with the stand-ins above. Raises ImportError without the package."""
    _shim_hydra_iopath_tqdm()
    _shim_torchvision_transforms()
    return importlib.import_module("sam2")


def _number(value: Any) -> Any:
    """PyYAML reads `1e-6` (no dot) as a string; hydra/omegaconf read it as a float."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _instantiate(node: Any) -> Any:
    """Build `_target_` nodes depth first (hydra's `instantiate(cfg, _recursive_=True)`)."""
    if isinstance(node, dict):
        args = {k: _instantiate(v) for k, v in node.items() if k != "_target_"}
        if "_target_" not in node:
            return args
        module, _, name = node["_target_"].rpartition(".")
        return getattr(importlib.import_module(module), name)(**args)
    if isinstance(node, list):
        return [_instantiate(v) for v in node]
    return _number(node)


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def official_config(config_file: str, overrides: dict | None = None) -> dict:
    """The `model` node of an official config file (sam2/configs/sam2.1/...), with the image
    predictor's decoder overrides and `overrides` merged in (nested dicts)."""
    import yaml

    package = official_sam2_package()
    path = Path(package.__file__).parent / "configs" / "sam2.1" / config_file
    model = yaml.safe_load(path.read_text())["model"]
    model = _merge(model, {"sam_mask_decoder_extra_args": POSTPROCESSING_DECODER_ARGS})
    return _merge(model, overrides or {})


def official_sam2(config_file: str, overrides: dict | None = None):
    """The official SAM2Base of `config_file` (plus `overrides`), random init, eval mode."""
    return _instantiate(official_config(config_file, overrides)).eval()


# The reduced official configuration that registry model `sam2_tiny_test` equals: 256x256
# input, a 4-stage Hiera of width 16 with every window kind (8x8; 4x4 after pooling; 14x14
# windows padding a 16x16 map; pooled 14 -> 7 and 7x7 windows padding an 8x8 map) and one
# global block, a 64-wide neck.
# The prompt encoder and mask decoder take their other sizes from SAM2Base itself (MLP 2048,
# 8 heads, IoU head 256, mask_in_chans 16).
TINY_TEST_OVERRIDES = {
    "image_size": 256,
    "image_encoder": {
        "trunk": {"embed_dim": 16, "num_heads": 1, "stages": [1, 2, 3, 2],
                  "global_att_blocks": [5], "window_pos_embed_bkg_spatial_size": [7, 7],
                  "window_spec": [8, 4, 14, 7]},
        "neck": {"d_model": 64, "backbone_channel_list": [128, 64, 32, 16]},
    },
}


def official_tiny_test_sam2():
    """The official SAM2Base at `sam2_tiny_test`'s sizes (from the hiera_t config file)."""
    return official_sam2("sam2.1_hiera_t.yaml", TINY_TEST_OVERRIDES)


def official_predictor(ours):
    """The official `SAM2ImagePredictor` on a SAM2Base of the same configuration as `ours`
    (a registry SAM 2 model built by `build_model`) holding `ours`' weights; the official
    video modules keep their own random init (the image path never reads them). Raises
    ImportError without the package."""
    official_sam2_package()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    name = ours.model_name
    theirs = official_tiny_test_sam2() if name == "sam2_tiny_test" else official_sam2(
        CONFIGS[name])
    state = theirs.state_dict()
    state.update(ours.state_dict())
    theirs.load_state_dict(state, strict=True)
    predictor = SAM2ImagePredictor(theirs)
    # The predictor hard-codes the feature sizes of a 1024 input; the test config is smaller
    _, h, w = ours.embedding_shape
    predictor._bb_feat_sizes = [(4 * h, 4 * w), (2 * h, 2 * w), (h, w)]
    return predictor
