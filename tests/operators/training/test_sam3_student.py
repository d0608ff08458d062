"""SAM 3 students without Ray: layout (a TinyViT trunk, every other key the teacher's), the pair
check, the stage-1 step reaching the trunk only, features-only validation, and the heads read
from a file in the official sam3.pt layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import ConceptModel, TrunkConceptModel, build_model
from models.export import head_state_dict, load_heads, transplant_heads
from models.sam3 import Sam3
from operators.shards.prepare import model_skeleton
from operators.training.loop import _trainable
from operators.training.pairing import check_pair
from operators.training.steps import EncoderStep
from operators.training.validate import validate

TRUNK = "backbone.vision_backbone.trunk."


def test_the_student_is_the_teacher_with_another_trunk():
    teacher, student = (model_skeleton(n) for n in ("sam3_tiny_test", "mobile_sam3_tiny_test"))
    for m in (teacher, student):
        assert isinstance(m, Sam3) and isinstance(m, TrunkConceptModel)
        assert m.embedding_shape == (64, 12, 12)
    t_keys = {k: tuple(v.shape) for k, v in teacher.state_dict().items()
              if not k.startswith(TRUNK)}
    s_keys = {k: tuple(v.shape) for k, v in student.state_dict().items()
              if not k.startswith(TRUNK)}
    assert t_keys == s_keys
    # head_prefixes cover every key but the trunk's
    heads = {k for k in student.state_dict() if k.startswith(student.head_prefixes)}
    assert heads == set(s_keys)
    trunk = {k.removeprefix(TRUNK) for k in student.state_dict() if k.startswith(TRUNK)}
    assert {"patch_embed.seq.0.c.weight", "neck.0.weight", "project.0.weight",
            "project.3.weight"} <= trunk
    check_pair("sam3_tiny_test", teacher, "mobile_sam3_tiny_test", student, (64, 12, 12))
    # full size: the trunk map of the ViT (1024x72x72) and the student's trunk at 1008 px
    full = model_skeleton("mobile_sam3")
    assert full.embedding_shape == model_skeleton("sam3").embedding_shape == (1024, 72, 72)
    check_pair("sam3", model_skeleton("sam3"), "mobile_sam3", full, (1024, 72, 72))
    with pytest.raises(ValueError, match="teacher.name: expected the model that wrote"):
        check_pair("sam3", model_skeleton("sam3"), "mobile_sam3", full, (64, 12, 12))
    with pytest.raises(ValueError,
                       match="student.name: expected a model with the teacher's 1024x72x72"):
        check_pair("sam3", model_skeleton("sam3"), "mobile_sam3_tiny_test", student)


def test_stage1_step_trains_the_trunk_only_and_validation_is_on_features():
    teacher = build_model("sam3_tiny_test", seed=0)
    torch.manual_seed(0)
    student = build_model("mobile_sam3_tiny_test")
    transplant_heads(student, head_state_dict(teacher), "the teacher")
    _trainable(student, ["image_encoder"])
    pixels = torch.randint(0, 256, (2, 168, 168, 3), dtype=torch.uint8)
    with torch.no_grad():
        target = teacher.embed_trunk(pixels.permute(0, 3, 1, 2))
    batch = {"pixels": pixels, "input_hw": torch.full((2, 2), 168), "target": target.half(),
             "valid": torch.full((2, 2), 12)}
    loss, emb = EncoderStep(student)(batch)
    assert emb.shape == (2, 64, 12, 12) and loss.ndim == 0
    loss.backward()
    for name, p in student.named_parameters():
        grad = p.grad is not None and bool(p.grad.abs().sum() > 0)
        if name.startswith(TRUNK + "project") or name.startswith(TRUNK + "patch_embed"):
            assert grad, name
        elif not name.startswith(TRUNK):
            assert not p.requires_grad and p.grad is None, name
    rows = {k: v.numpy() for k, v in batch.items()}
    rows["orig_hw"] = np.array([[300, 200], [200, 300]])
    rows["rles"] = np.array(["[]", "[]"], dtype=object)
    out = validate(student, None, [rows], torch.device("cpu"), torch.autocast("cpu",
                                                                              enabled=False))
    assert set(out) == {"val_images", "val_mse", "val_cosine"} and out["val_images"] == 2
    assert out["val_mse"] == pytest.approx(float(loss), rel=1e-3)


def test_heads_come_from_a_file_in_the_official_layout(tmp_path):
    teacher = build_model("sam3_tiny_test", seed=3)
    path = tmp_path / "sam3.pt"
    torch.save({"model": {**{f"detector.{k}": v for k, v in teacher.state_dict().items()},
                          "tracker.maskmem_tpos_enc": torch.zeros(7, 1, 1, 64)}}, path)
    heads, digest = load_heads("sam3_tiny_test", path)
    assert digest and heads.keys() == head_state_dict(teacher).keys()
    student = build_model("mobile_sam3_tiny_test")
    assert isinstance(student, ConceptModel)
    transplant_heads(student, heads, "sam3.pt")
    for k, v in head_state_dict(teacher).items():
        assert torch.equal(student.state_dict()[k], v), k
