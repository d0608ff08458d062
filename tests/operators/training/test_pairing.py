"""Which teacher/student pairs can train, and the cells of a grid that hold the image."""

from __future__ import annotations

import pytest

from operators.shards.prepare import model_skeleton
from operators.training.pairing import check_pair, embedding_frame, valid_cells


@pytest.mark.parametrize("teacher,student", [
    ("sam_tiny", "mobile_sam_tiny"),
    ("sam_vit_h", "mobile_sam"),
    ("sam_vit_h", "efficientvit_sam_l0"),  # a 512 encoder, the same 64x64 frame
    ("efficient_sam_vits", "efficient_sam_vitt"),
])
def test_pairs_in_one_frame_are_accepted(teacher, student):
    check_pair(teacher, model_skeleton(teacher), student, model_skeleton(student),
               model_skeleton(teacher).embedding_shape)


def test_a_stretching_student_of_a_padding_teacher_is_refused_naming_both():
    assert embedding_frame(model_skeleton("efficient_sam_vitt")) == "stretch"
    assert embedding_frame(model_skeleton("efficientvit_sam_l0")) == "pad"
    with pytest.raises(ValueError) as e:
        check_pair("sam_vit_h", model_skeleton("sam_vit_h"), "efficient_sam_vitt",
                   model_skeleton("efficient_sam_vitt"), (256, 64, 64))
    msg = str(e.value)
    assert msg.startswith("student.name: expected a model in the teacher's pad frame")
    assert "efficient_sam_vitt (256x64x64 embedding, stretch frame" in msg


def test_other_embedding_shapes_are_refused():
    with pytest.raises(ValueError, match="student.name: expected a model with the teacher's "
                                         "32x8x8 embedding, got mobile_sam"):
        check_pair("sam_tiny", model_skeleton("sam_tiny"), "mobile_sam",
                   model_skeleton("mobile_sam"), (32, 8, 8))
    with pytest.raises(ValueError, match="teacher.name: expected the model that wrote the "
                                         "embeddings \\(256x64x64\\)"):
        check_pair("sam_tiny", model_skeleton("sam_tiny"), "mobile_sam_tiny",
                   model_skeleton("mobile_sam_tiny"), (256, 64, 64))


def test_valid_cells_are_those_whose_centre_holds_image():
    assert valid_cells((1024, 683), 1024, (64, 64)) == (64, 43)  # 683/16 = 42.7 -> 43
    assert valid_cells((512, 341), 512, (64, 64)) == (64, 43)  # EfficientViT-SAM L: same
    assert valid_cells((128, 67), 128, (8, 8)) == (8, 4)  # 4.19 cells
    assert valid_cells((128, 1), 128, (8, 8)) == (8, 1)  # never none
