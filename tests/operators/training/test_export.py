"""Student files in each family's official format, and heads moved bit for bit."""

from __future__ import annotations

import pytest
import torch

from models import build_model
from models.checkpoint import CheckpointError
from models.export import (
    check_heads,
    head_state_dict,
    heads_model,
    load_heads,
    official_checkpoint,
    save_official_checkpoint,
    transplant_heads,
)


@pytest.mark.parametrize("name,wrapper", [("mobile_sam_tiny", None), ("sam_tiny", None),
                                          ("efficientvit_sam_l0", "state_dict")])
def test_official_format_loads_strictly(name, wrapper, tmp_path):
    torch.manual_seed(0)
    model = build_model(name)
    obj = official_checkpoint(model)
    assert (list(obj) == [wrapper]) if wrapper else all(isinstance(v, torch.Tensor)
                                                        for v in obj.values())
    path = tmp_path / f"{name}.pt"
    save_official_checkpoint(model, path)
    loaded = build_model(name, checkpoint=path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_efficient_sam_files_wrap_the_state_dict_in_model():
    obj = official_checkpoint(build_model("efficient_sam_vitt"))
    assert list(obj) == ["model"]


def test_teacher_heads_go_into_a_student_bit_for_bit(tmp_path):
    teacher = build_model("sam_tiny", seed=3)
    save_official_checkpoint(teacher, tmp_path / "t.pt")
    heads, digest = load_heads("sam_tiny", tmp_path / "t.pt")
    assert digest is not None and len(heads) == len(head_state_dict(teacher))
    student = build_model("mobile_sam_tiny", seed=1)
    encoder_before = {k: v.clone() for k, v in student.state_dict().items()
                      if k.startswith("image_encoder.")}
    transplant_heads(student, heads, "the teacher")
    for k, v in head_state_dict(teacher).items():
        assert torch.equal(student.state_dict()[k], v), k
    for k, v in encoder_before.items():
        assert torch.equal(student.state_dict()[k], v), k
    # decode-only teacher: same outputs as the whole model
    only = heads_model("sam_tiny", heads)
    emb = torch.randn(1, 32, 8, 8)
    pts, lab = torch.tensor([[[40.0, 50.0]]]), torch.tensor([[1]])
    assert torch.equal(only.decode(emb, pts, lab)[0], teacher.decode(emb, pts, lab)[0])


def test_heads_of_another_design_are_refused():
    with pytest.raises(CheckpointError, match="do not fit"):
        check_heads(build_model("efficient_sam_vitt"),
                    head_state_dict(build_model("sam_tiny")), "sam_tiny")
