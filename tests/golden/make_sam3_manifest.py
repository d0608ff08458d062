"""The manifest of the official SAM 3 checkpoint's layout for tests/models/test_sam3_manifest.py.

The official file `sam3.pt` (`{"model": state_dict}` or a plain state dict, the official loader
accepts both) cannot be downloaded here. It holds the image model under `detector.` and the
video tracker under `tracker.`. Its keys, shapes and dtypes are those of the official modules,
which this script builds (random init on the CPU) and writes out:

    .venv/bin/pip install --no-deps sam3==0.1.4
    .venv/bin/python -m tests.golden.make_sam3_manifest   # writes tests/data/sam3.manifest.json

- `detector.`: `Sam3Image` as `build_sam3_image_model` composes it, with the vision neck's
  SAM 2 branch (`sam2_convs`) that the video model builds (`_create_vision_backbone`'s default
  `enable_inst_interactivity=True`): the released file's detector part has those 22 tensors
  too (1,156 detector keys), and the image builder's strict=False load hides the difference.
- `tracker.`: `build_tracker(apply_temporal_disambiguation=True)` without its own backbone (the
  tracker shares the detector's), as `build_sam3_video_model` builds it.

Each entry is [key, shape, dtype, is_parameter] in the official order; the parameter counts
and the config facts the registry builder copies come with them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.golden.make_sam3_official import cpu_only, official

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


def official_detector(bpe_path: str) -> torch.nn.Module:
    """The official Sam3Image in the released file's detector layout, random init, eval."""
    mb = official("sam3.model_builder")
    with cpu_only():
        vision = mb._create_vision_backbone(enable_inst_interactivity=True)
        text = mb._create_text_encoder(bpe_path)
        model = mb._create_sam3_model(
            mb._create_vl_backbone(vision, text), mb._create_sam3_transformer(),
            mb._create_geometry_encoder(), mb._create_segmentation_head(),
            mb._create_dot_product_scoring(), None, True)
    return model.eval()


def official_tracker() -> torch.nn.Module:
    mb = official("sam3.model_builder")
    with cpu_only():
        return mb.build_tracker(apply_temporal_disambiguation=True).eval()


def _entries(prefix: str, model: torch.nn.Module) -> list[list]:
    params = {k for k, _ in model.named_parameters()}
    return [[prefix + k, list(v.shape), str(v.dtype).removeprefix("torch."), k in params]
            for k, v in model.state_dict().items()]


def manifest(bpe_path: str) -> dict:
    detector, tracker = official_detector(bpe_path), official_tracker()
    return {
        "model": "sam3",
        "source": "official Sam3Image + tracker of PyPI sam3 0.1.4 (facebookresearch/sam3), "
                  f"torch {torch.__version__.split('+')[0]}",
        "checkpoint": "sam3.pt",
        "wrapping": "model (or plain)",
        "detector_parameters": sum(p.numel() for p in detector.parameters()),
        "tracker_parameters": sum(p.numel() for p in tracker.parameters()),
        "image_size": 1008,
        "keys": _entries("detector.", detector) + _entries("tracker.", tracker),
    }


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bpe", required=True,
                        help="any vocabulary file in the official format (only the tokenizer "
                             "reads it; no key depends on it), e.g. tests/sam3_vocab.py's")
    args = parser.parse_args()
    path = DATA / "sam3.manifest.json"
    path.write_text(json.dumps(manifest(args.bpe), indent=0) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
