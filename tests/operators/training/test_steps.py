"""The training steps, validation and saved state, without Ray (what each worker runs)."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from models import build_model
from models.export import head_state_dict, heads_model
from operators.training.config import Stage1Config, Stage2Config
from operators.training.ingest import (
    IngestSpec,
    attach_sources,
    embedding_shards,
    read_training_rows,
)
from operators.training.loop import stack_rows
from operators.training.schedule import build_optimizer
from operators.training.state import Progress, read_state, restore, save_state
from operators.training.steps import EncoderStep, PromptedStep
from operators.training.validate import validate
from tests.operators.training.corpus import make_corpus, train_losses

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    _, emb = make_corpus(tmp_path_factory.mktemp("c"), shards=1, per_shard=4)
    shard = attach_sources(embedding_shards(emb), None)[0]
    spec = IngestSpec(student="sam_tiny", teacher="sam_tiny", teacher_embedding=True,
                      instances=4, mask_size=32, ground_truth_rles=True,
                      random_instances=False)
    return list(read_training_rows(shard.item(), spec))


def _torch(batch):
    return {k: torch.as_tensor(v) for k, v in batch.items() if k != "rles"}


def test_the_teacher_as_its_own_student_agrees_fully(rows):
    teacher = build_model("sam_tiny", seed=0)  # the corpus's teacher
    heads = heads_model("sam_tiny", head_state_dict(teacher))
    out = validate(teacher, heads, [stack_rows(rows)], CPU, nullcontext(), grid=3)
    assert out["val_images"] == 4
    assert out["val_mse"] < 1e-5 and out["val_cosine"] > 0.9999  # float16 storage only
    assert out["val_agreement_miou"] == pytest.approx(100.0, abs=0.1)  # fp16 target
    assert out["val_agreement_box_miou"] == pytest.approx(100.0, abs=0.1)
    assert 0.0 <= out["val_box_miou"] <= 100.0
    no_gt = validate(teacher, heads, [stack_rows([{k: v for k, v in r.items() if k != "rles"}
                                                  for r in rows])], CPU, nullcontext())
    assert set(no_gt) == {"val_images", "val_mse", "val_cosine", "val_agreement_miou"}


def test_a_stage1_step_lowers_the_loss_on_its_batch(rows):
    torch.manual_seed(0)
    student = build_model("mobile_sam_tiny")
    step = EncoderStep(student.train())
    batch = _torch(stack_rows(rows))
    opt, sched = build_optimizer(student, Stage1Config(lr=1e-3, warmup_epochs=0), 20, 0)
    losses = train_losses(step, batch, opt, 20, sched)
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("targets", ["teacher", "ground_truth"])
def test_a_stage2_step_backpropagates_through_encoder_and_decoder(rows, targets):
    torch.manual_seed(0)
    student = build_model("sam_tiny").train()
    teacher = heads_model("sam_tiny", head_state_dict(build_model("sam_tiny", seed=0)))
    cfg = Stage2Config(targets=targets, refine_iters=1)
    step = PromptedStep(student, teacher if targets == "teacher" else None, cfg, 32)
    batch = _torch(stack_rows(rows))
    for use_boxes in (True, False):
        student.zero_grad()
        loss, parts = step(batch, use_boxes, torch.Generator().manual_seed(0))
        loss.backward()
        assert torch.isfinite(loss) and set(parts) >= {"dice", "iou"}
        for module in (student.image_encoder, student.mask_decoder):
            assert any(p.grad is not None and p.grad.abs().sum() > 0
                       for p in module.parameters())


def test_saved_state_restores_weights_optimizer_and_schedule(tmp_path):
    torch.manual_seed(0)
    model = build_model("mobile_sam_tiny")
    cfg = Stage1Config(lr=1e-3)
    opt, sched = build_optimizer(model, cfg, 10, 2)
    x = torch.randint(0, 255, (2, 3, 128, 128), dtype=torch.uint8)
    for _ in range(3):
        model.embed_images(x, torch.tensor([[128, 128]] * 2)).square().mean().backward()
        opt.step()
        sched.step()
    save_state(str(tmp_path), model, opt, sched, Progress(step=3, passes=1, batch_in_pass=1,
                                                          images=6))
    other = build_model("mobile_sam_tiny")
    opt2, sched2 = build_optimizer(other, cfg, 10, 2)
    progress = restore(read_state(str(tmp_path)), other, opt2, sched2)
    assert (progress.step, progress.passes, progress.batch_in_pass, progress.images) == \
        (3, 1, 1, 6)
    assert sched2.last_epoch == 3 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
