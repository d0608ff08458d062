"""SAM 2.1 teachers and their students: which pairs train, the heads moved and decoded from a
file, and the student's layout (models/sam2/student.py)."""

from __future__ import annotations

import pytest
import torch

from models import build_model
from models.export import head_state_dict, heads_model, load_heads, transplant_heads
from models.sam2 import VIDEO_ONLY_PREFIXES
from operators.shards.prepare import model_skeleton
from operators.training.pairing import check_pair


@pytest.mark.parametrize("teacher,student", [
    ("sam2_1_hiera_t", "mobile_sam2"),
    ("sam2_1_hiera_l", "mobile_sam2"),  # every size's heads have one shape
    ("sam2_tiny_test", "mobile_sam2_tiny_test"),
])
def test_sam2_teachers_pair_with_their_students(teacher, student):
    check_pair(teacher, model_skeleton(teacher), student, model_skeleton(student),
               model_skeleton(teacher).embedding_shape)


@pytest.mark.parametrize("teacher,student,why", [
    ("sam2_1_hiera_b_plus", "mobile_sam", "expected a model in the teacher's stretch frame"),
    ("sam_vit_h", "mobile_sam2", "expected a model in the teacher's pad frame"),
    # same frame and shape, another decoder: the heads do not fit
    ("sam2_1_hiera_s", "efficient_sam_vitt", "do not fit EfficientSam"),
])
def test_sam2_and_sam1_designs_are_refused_as_pairs(teacher, student, why):
    with pytest.raises(ValueError, match=why):
        check_pair(teacher, model_skeleton(teacher), student, model_skeleton(student),
                   model_skeleton(teacher).embedding_shape)


def test_sam2_heads_from_an_official_layout_file_decode_as_the_whole_model(tmp_path):
    teacher = build_model("sam2_tiny_test", seed=4)
    state = teacher.state_dict()
    assert {"no_mem_embed", "sam_mask_decoder.conv_s0.weight",
            "sam_mask_decoder.obj_score_token.weight"} <= head_state_dict(teacher).keys()
    # an official file: {"model": sd} with the video model's keys beside the image path's
    video = {f"{VIDEO_ONLY_PREFIXES[0]}layers.0.weight": torch.zeros(2, 2)}
    torch.save({"model": {**state, **video}}, tmp_path / "sam2.pt")
    heads, digest = load_heads("sam2_tiny_test", tmp_path / "sam2.pt")
    assert digest is not None and heads.keys() == head_state_dict(teacher).keys()

    only = heads_model("sam2_tiny_test", heads)
    with torch.no_grad():
        feats = teacher.embed_images_with_features(torch.rand(1, 3, 256, 256))
        pts, lab = torch.tensor([[[40.0, 50.0]]]), torch.ones(1, 1, dtype=torch.int)
        want = teacher.decode(feats["image_embed"], pts, lab,
                              high_res_features=feats["high_res_feats"])
        got = only.decode(feats["image_embed"], pts, lab,
                          high_res_features=feats["high_res_feats"])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    student = build_model("mobile_sam2_tiny_test", seed=1)
    transplant_heads(student, heads, "the teacher")
    for k, v in head_state_dict(teacher).items():
        assert torch.equal(student.state_dict()[k], v), k


@pytest.mark.parametrize("student,base,teacher", [
    ("mobile_sam2", "mobile_sam", "sam2_1_hiera_l"),
    ("efficientvit_sam2_l0", "efficientvit_sam_l0", "sam2_1_hiera_t"),
])
def test_a_sam2_students_encoder_keys_are_its_sam1_encoders_plus_two_projections(
        student, base, teacher):
    """The SAM 1 student's encoder exactly (its file's image_encoder.* can start the SAM 2
    student) and the two high-res projections; the rest is the SAM 2 teacher's."""
    ours = model_skeleton(student).state_dict()
    sam1 = model_skeleton(base).state_dict()
    enc = {k: tuple(v.shape) for k, v in ours.items() if k.startswith("image_encoder.")}
    extra = {k for k in enc if k.startswith(("image_encoder.high_res_s4.",
                                             "image_encoder.high_res_s8."))}
    assert extra == {f"image_encoder.high_res_s{s}.{p}" for s in (4, 8)
                     for p in ("weight", "bias")}
    assert {k: v for k, v in enc.items() if k not in extra} == {
        k: tuple(v.shape) for k, v in sam1.items() if k.startswith("image_encoder.")}
    heads = model_skeleton(teacher).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items() if not k.startswith("image_encoder.")} \
        == {k: tuple(v.shape) for k, v in heads.items() if not k.startswith("image_encoder.")}


@pytest.mark.parametrize("high_res", [True, False])
def test_validation_of_a_sam2_pair_decodes_with_the_maps_it_has(tmp_path, high_res):
    """The teacher as its own student: with the corpus's high-res maps the agreement is that
    of fp16-stored features with fp32 ones (near 100); without them no agreement is made (the
    teacher's reference would lack its maps), box mIoU vs the annotations still is."""
    from contextlib import nullcontext

    from operators.training.ingest import (
        IngestSpec,
        attach_sources,
        embedding_shards,
        read_training_rows,
    )
    from operators.training.loop import stack_rows
    from operators.training.validate import validate
    from tests.operators.training.corpus import make_corpus

    _, emb = make_corpus(tmp_path, shards=1, per_shard=2, teacher="sam2_tiny_test",
                         high_res=high_res)
    shards = attach_sources(embedding_shards(emb), None)
    spec = IngestSpec(student="sam2_tiny_test", teacher="sam2_tiny_test",
                      teacher_embedding=True, instances=8, ground_truth_rles=True,
                      render_masks=False, random_instances=False, high_res=high_res)
    rows = list(read_training_rows(shards[0].item(), spec))
    assert len(rows) == 2
    teacher = build_model("sam2_tiny_test", seed=0)
    heads = heads_model("sam2_tiny_test", head_state_dict(teacher))
    out = validate(teacher, heads, [stack_rows(rows)], torch.device("cpu"), nullcontext(),
                   grid=3)
    assert out["val_images"] == 2 and out["val_cosine"] > 0.999 and "val_box_miou" in out
    if high_res:
        assert out["val_high_res_mse"] < 1e-4
        assert out["val_agreement_miou"] > 95 and out["val_agreement_box_miou"] > 95
    else:
        assert not {"val_high_res_mse", "val_agreement_miou",
                    "val_agreement_box_miou"} & out.keys()
