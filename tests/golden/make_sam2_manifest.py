"""Manifests of the official SAM 2.1 state dicts for tests/models/test_sam2_manifest.py.

The official checkpoints (`{"model": state_dict}`, video modules included) cannot be
downloaded here; their keys, shapes and dtypes are those of the official `SAM2Base` built from
the official config files, which this script builds (random init on the CPU: the official
Hiera calls `.item()` at construction, so the meta device is out) and writes out:

    SAM2_BUILD_CUDA=0 .venv/bin/pip install --no-deps --no-build-isolation sam2==1.1.0
    .venv/bin/python -m tests.golden.make_sam2_manifest
    # writes tests/data/sam2_1_hiera_{t,s,b_plus,l}.manifest.json

Each manifest holds every state-dict entry as [key, shape, dtype, is_parameter] in the
official order, the parameter count of the whole model, the element count of the whole state
dict and of its image path (`image_encoder.`, `sam_prompt_encoder.`, `sam_mask_decoder.`,
`no_mem_embed`), and the config facts the registry builders copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.golden.make_sam2_official import (
    CONFIGS,
    official_config,
    official_sam2,
    official_sam2_package,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
IMAGE_PATH_PREFIXES = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.",
                       "no_mem_embed")
FILES = {
    "sam2_1_hiera_t": "sam2.1_hiera_tiny.pt",
    "sam2_1_hiera_s": "sam2.1_hiera_small.pt",
    "sam2_1_hiera_b_plus": "sam2.1_hiera_base_plus.pt",
    "sam2_1_hiera_l": "sam2.1_hiera_large.pt",
}


def manifest(name: str) -> dict:
    """The manifest of registry model `name` (one of CONFIGS), from the official model."""
    sam2 = official_sam2_package()
    config = official_config(CONFIGS[name])
    model = official_sam2(CONFIGS[name])
    params = {k for k, _ in model.named_parameters()}
    state = model.state_dict()
    trunk = config["image_encoder"]["trunk"]
    return {
        "model": name,
        "source": f"official SAM2Base from sam2/configs/sam2.1/{CONFIGS[name]} (PyPI sam2 "
                  f"{getattr(sam2, '__version__', '1.1.0')} = facebookresearch/sam2 2b90b9f, "
                  f"torch {torch.__version__.split('+')[0]})",
        "checkpoint": FILES[name],
        "wrapping": "model",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "state_dict_numel": sum(v.numel() for v in state.values()),
        "image_path_numel": sum(v.numel() for k, v in state.items()
                                if k.startswith(IMAGE_PATH_PREFIXES)),
        "trunk": {k: v for k, v in trunk.items() if k != "_target_"},
        "image_size": config["image_size"],
        "keys": [[k, list(v.shape), str(v.dtype).removeprefix("torch."), k in params]
                 for k, v in state.items()],
    }


def main() -> None:
    for name in CONFIGS:
        path = DATA / f"{name}.manifest.json"
        path.write_text(json.dumps(manifest(name), indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
