"""The checkpoint samdata ships (models/weights/sam_demo.pt, the demo's model): it loads the
way official files do, its digest is the one the README states, and it finds the shapes of
sample images it never saw in training."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from models import Predictor, build_model
from models.registry import SHIPPED_CHECKPOINTS, shipped_checkpoint
from operators.shards.sample import _make_image

README = Path(__file__).resolve().parents[2] / "README.md"
# Box-prompted mIoU (x100) on the 24 shapes of the held-out images below: the shipped weights
# measured 69.4, seeded random weights 5.2. The bars leave a margin on both sides.
MIN_BOX_MIOU = 60.0
MAX_RANDOM_BOX_MIOU = 15.0


def test_loads_strictly_with_weights_only():
    path, sha = shipped_checkpoint("sam_demo")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model("sam_demo", seed=0)
    assert set(state) == set(model.state_dict())  # the official layout: a bare state dict
    model.load_state_dict(state, strict=True)
    loaded = build_model("sam_demo", checkpoint=path, sha256=sha)
    assert loaded.checkpoint_sha256 == sha
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_digest_matches_the_registry_and_the_readme():
    path, sha = shipped_checkpoint("sam_demo")
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha
    stated = re.findall(r"models/weights/sam_demo\.pt[^\n]{0,80}?\b([0-9a-f]{64})\b",
                        README.read_text())
    assert stated and set(stated) == {sha}, f"README states {stated}, the file is {sha}"


def test_unknown_shipped_model_is_named():
    with pytest.raises(KeyError, match="sam_demo"):
        shipped_checkpoint("sam_vit_h")
    assert set(SHIPPED_CHECKPOINTS) == {"sam_demo"}


def _held_out_images(n: int = 6) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """n sample images (uint8 HxWx3, bool HxW masks) from a seed the training corpus
    (seed 1) does not use, at the training sizes."""
    rng = np.random.default_rng([12345, 0])
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(192, 385, 2))
        out.append(_make_image(rng, h, w, max_shapes=6, texture=4.0))
    return out


def _box_miou(model: torch.nn.Module) -> float:
    """Mean IoU x100 of one box-prompted mask per shape: of the 3 masks of the multimask
    output, the one of highest predicted IoU (the `evaluate box` protocol; stage 2 trains the
    multimask outputs)."""
    predictor = Predictor(model)
    ious = []
    for image, masks in _held_out_images():
        embedding = predictor.embed([image])[0]
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        out = predictor.predict(embedding, image.shape[:2], boxes=np.array(boxes, np.float32),
                                multimask=True, return_logits=False)
        best = out["iou_predictions"].argmax(dim=1)
        chosen = out["masks"][torch.arange(len(best)), best].cpu().numpy()
        for pred, m in zip(chosen, masks, strict=True):
            rles = mask_utils.encode(np.asfortranarray(np.stack([pred, m], -1).astype(np.uint8)))
            ious.append(float(mask_utils.iou(rles[:1], rles[1:], [0])[0, 0]))
    return 100.0 * float(np.mean(ious))


def test_finds_the_shapes_of_held_out_images():
    path, sha = shipped_checkpoint("sam_demo")
    trained = _box_miou(build_model("sam_demo", checkpoint=path, sha256=sha))
    random = _box_miou(build_model("sam_demo", seed=0))
    assert trained >= MIN_BOX_MIOU, f"shipped weights: box mIoU {trained:.1f}"
    assert random <= MAX_RANDOM_BOX_MIOU, f"random weights: box mIoU {random:.1f}"
