"""SAM 2.1 students in both stages without Ray: the EfficientViT student's layout and pairing
(models/sam2/student.py), a stage-1 step of it, and stage 2 (the decoder in the loop with
high-res maps) for both students on a SAM 2 teacher's masks and on the ground truth."""

from __future__ import annotations

import pytest
import torch

from models import HighResPromptableModel, build_model
from models.export import head_state_dict, heads_model
from operators.shards.prepare import model_skeleton
from operators.training.config import Stage1Config, Stage2Config
from operators.training.ingest import (
    IngestSpec,
    attach_sources,
    embedding_shards,
    read_training_rows,
)
from operators.training.loop import stack_rows
from operators.training.pairing import check_pair
from operators.training.schedule import build_optimizer
from operators.training.steps import HIGH_RES_TARGETS, EncoderStep, PromptedStep
from tests.operators.training.corpus import make_corpus, train_losses

STUDENTS = ("mobile_sam2_tiny_test", "efficientvit_sam2_tiny_test")
MASK_SIZE = 64  # the tiny decoders' low-res size (4 x the 16x16 grid)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """4 stage-2 rows of sam2_tiny_test's corpus (seed-0 teacher, high-res maps stored) with
    4 instances each, as one torch batch (both students prepare images as SAM 2 does)."""
    _, emb = make_corpus(tmp_path_factory.mktemp("sam2_students"), shards=1, per_shard=4,
                         teacher="sam2_tiny_test", high_res=True)
    shard = attach_sources(embedding_shards(emb), None)[0]
    spec = IngestSpec(student=STUDENTS[0], teacher="sam2_tiny_test", teacher_embedding=True,
                      high_res=True, instances=4, mask_size=MASK_SIZE, random_instances=False)
    rows = list(read_training_rows(shard.item(), spec))
    assert len(rows) == 4
    return {k: torch.as_tensor(v) for k, v in stack_rows(rows).items()}


def _teacher():
    return heads_model("sam2_tiny_test", head_state_dict(build_model("sam2_tiny_test", seed=0)))


@pytest.mark.parametrize("teacher,student", [
    ("sam2_1_hiera_b_plus", "efficientvit_sam2_l0"),
    ("sam2_tiny_test", "efficientvit_sam2_tiny_test"),
])
def test_the_efficientvit_student_pairs_with_sam2_teachers(teacher, student):
    t, s = model_skeleton(teacher), model_skeleton(student)
    check_pair(teacher, t, student, s, t.embedding_shape)
    assert isinstance(s, HighResPromptableModel) and s.high_res_shapes == t.high_res_shapes


def test_the_efficientvit_student_runs_its_backbone_at_half_the_frame():
    model = build_model("efficientvit_sam2_tiny_test", seed=0)
    seen = []
    hook = model.image_encoder.backbone.register_forward_hook(
        lambda m, args, out: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        feats = model.embed_images_with_features(torch.rand(2, 3, 256, 256))
    hook.remove()
    assert seen == [(2, 3, 128, 128)]
    assert feats["image_embed"].shape == (2, 64, 16, 16)
    assert [tuple(m.shape) for m in feats["high_res_feats"]] == [(2, 8, 64, 64),
                                                                 (2, 16, 32, 32)]


def test_a_stage1_step_of_the_efficientvit_student_lowers_embedding_and_map_losses(batch):
    torch.manual_seed(0)
    student = build_model("efficientvit_sam2_tiny_test").train()
    step = EncoderStep(student, high_res_weight=1.0)
    opt, sched = build_optimizer(student, Stage1Config(lr=3e-3, warmup_epochs=0), 20, 0)
    losses = train_losses(step, batch, opt, 20, sched)
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("targets", ["teacher", "ground_truth"])
def test_a_sam2_stage2_step_trains_encoder_projections_and_decoder(batch, name, targets):
    torch.manual_seed(0)
    student = build_model(name).train()
    cfg = Stage2Config(targets=targets, refine_iters=1)
    step = PromptedStep(student, _teacher() if targets == "teacher" else None, cfg, MASK_SIZE)
    for use_boxes in (True, False):
        student.zero_grad()
        loss, parts = step(batch, use_boxes, torch.Generator().manual_seed(0))
        loss.backward()
        assert torch.isfinite(loss) and set(parts) >= {"dice", "iou"}
        enc = student.image_encoder
        for module in (enc, enc.high_res_s4, enc.high_res_s8, student.sam_mask_decoder,
                       student.sam_mask_decoder.conv_s0):
            assert any(p.grad is not None and p.grad.abs().sum() > 0
                       for p in module.parameters()), type(module).__name__


def test_sam2_stage2_steps_lower_the_loss_on_the_teachers_masks(batch):
    """A few steps on one batch (same prompts each time): the student moves to the masks the
    teacher's decoder makes from the stored embedding and maps."""
    torch.manual_seed(0)
    student = build_model("mobile_sam2_tiny_test").train()
    cfg = Stage2Config(targets="teacher", refine_iters=0, grad_clip=None)
    step = PromptedStep(student, _teacher(), cfg, MASK_SIZE)
    opt, sched = build_optimizer(student, cfg.model_copy(update={"lr": 1e-3}), 15, 0)
    losses = []
    for _ in range(15):
        loss, _ = step(batch, True, torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_a_sam2_teacher_without_its_maps_in_the_batch_is_named(batch):
    step = PromptedStep(build_model(STUDENTS[0]).train(), _teacher(),
                        Stage2Config(targets="teacher"), MASK_SIZE)
    without = {k: v for k, v in batch.items() if k not in HIGH_RES_TARGETS}
    with pytest.raises(ValueError, match="expected the SAM 2 teacher's high-res maps"):
        step(without, True, torch.Generator().manual_seed(0))
