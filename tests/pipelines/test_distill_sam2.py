"""`samdata distill` with a SAM 2.1 teacher: sam2_tiny_test's corpus (embedding and high-res
maps) trains mobile_sam2_tiny_test's and efficientvit_sam2_tiny_test's encoders on Ray Train
(stage 1), then the EfficientViT student's encoder and decoder on the teacher's masks (stage 2);
the files load back strictly with the teacher's SAM 2 heads; what cannot run is refused before
Ray starts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models import HighResPromptableModel, build_model
from models.export import head_state_dict
from pipelines.config import ConfigError, DistillConfig, parse_config
from pipelines.distill import run_distill
from tests.operators.training.corpus import make_corpus, stage1_config


def _stage1(corpus: tuple[str, str], out: Path, **sections) -> dict:
    """A stage-1 config: sam2_tiny_test's embeddings -> mobile_sam2_tiny_test."""
    return stage1_config(corpus[1], out, "mobile_sam2_tiny_test", 40, 4, "sam2", **sections)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3 shards x 4 images embedded by sam2_tiny_test (seed-0 weights), with its high-res
    maps (embed output.high_res) and the JPEGs."""
    return make_corpus(tmp_path_factory.mktemp("distill_sam2"), shards=3, per_shard=4,
                       teacher="sam2_tiny_test", high_res=True)


def test_stage1_of_a_sam2_student_learns_and_its_file_loads_strictly(ray_local, corpus,
                                                                      tmp_path):
    summary = run_distill(parse_config(_stage1(corpus, tmp_path / "runs"), DistillConfig))
    assert (summary.steps, summary.total_steps) == (40, 40)
    # (log windows of 20 steps: the first one's mean holds the start of the descent)
    assert summary.final_loss < 0.8 * summary.first_loss
    first, last = summary.validation_first, summary.validation_final
    assert last["val_mse"] < 0.6 * first["val_mse"]
    assert last["val_cosine"] > first["val_cosine"] + 0.3
    assert last["val_high_res_mse"] < 0.6 * first["val_high_res_mse"]
    # masks: the teacher's from the corpus's maps, the student's from its own
    assert {"val_agreement_miou", "val_agreement_box_miou", "val_box_miou"} <= last.keys()

    # SAM 2.1's format ({"model": sd}), loaded strictly; the teacher's heads bit for bit
    path = Path(summary.checkpoint)
    assert path == tmp_path / "runs" / "sam2" / "mobile_sam2_tiny_test.pt"
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert list(raw) == ["model"]
    student = build_model("mobile_sam2_tiny_test", checkpoint=path, sha256=summary.sha256)
    assert isinstance(student, HighResPromptableModel)
    teacher_heads = head_state_dict(build_model("sam2_tiny_test", seed=0))
    heads = head_state_dict(student)
    assert heads.keys() == teacher_heads.keys()
    assert {"no_mem_embed", "sam_mask_decoder.conv_s0.weight",
            "sam_mask_decoder.pred_obj_score_head.layers.0.weight"} <= heads.keys()
    for k, v in teacher_heads.items():
        assert torch.equal(heads[k], v), k
    # and it decodes a prompt from its own high-res maps
    feats = student.embed_images_with_features(torch.rand(1, 3, 256, 256))
    logits, iou = student.decode(feats["image_embed"], torch.tensor([[[128.0, 128.0]]]),
                                 torch.ones(1, 1, dtype=torch.int),
                                 high_res_features=feats["high_res_feats"])
    assert logits.shape == (1, 3, 64, 64) and iou.shape == (1, 3)


@pytest.fixture(scope="module")
def efficientvit_stage1(ray_local, corpus, tmp_path_factory):
    """Stage 1 of efficientvit_sam2_tiny_test on the corpus (30 steps): its summary."""
    data = stage1_config(corpus[1], tmp_path_factory.mktemp("evit_runs"),
                         "efficientvit_sam2_tiny_test", 30, 4, "evit1",
                         compute={"log_every": 10})
    return run_distill(parse_config(data, DistillConfig))


def test_stage1_trains_the_efficientvit_sam2_student_and_its_file_loads_strictly(
        efficientvit_stage1):
    summary = efficientvit_stage1
    print(summary.text())
    assert (summary.steps, summary.total_steps) == (30, 30)
    assert summary.final_loss < 0.8 * summary.first_loss
    first, last = summary.validation_first, summary.validation_final
    assert last["val_mse"] < first["val_mse"]
    assert last["val_high_res_mse"] < first["val_high_res_mse"]
    raw = torch.load(summary.checkpoint, map_location="cpu", weights_only=True)
    assert list(raw) == ["model"]
    student = build_model("efficientvit_sam2_tiny_test", checkpoint=summary.checkpoint,
                          sha256=summary.sha256)
    assert {"image_encoder.backbone.stages.0.op_list.0.conv.weight",
            "image_encoder.neck.output_ops.0.op_list.0.conv.weight",
            "image_encoder.high_res_s4.weight"} <= student.state_dict().keys()
    for k, v in head_state_dict(build_model("sam2_tiny_test", seed=0)).items():
        assert torch.equal(student.state_dict()[k], v), k


def test_stage2_trains_a_sam2_student_on_the_teachers_masks_from_its_stage1_file(
        efficientvit_stage1, corpus, tmp_path):
    """EdgeSAM's stage 2 for SAM 2: the stage-1 student file, prompts from the shards'
    annotations, targets from the teacher's decoder on the stored embedding and high-res maps,
    the student decoding with its own maps."""
    data = _stage1(corpus, tmp_path / "runs", stage=2,
                   student={"name": "efficientvit_sam2_tiny_test",
                            "checkpoint": efficientvit_stage1.checkpoint},
                   stage2={"targets": "teacher", "batch_size": 4, "steps": 20, "lr": 1e-3,
                           "grad_clip": 1.0},
                   validation={"every": 20, "images": 4}, compute={"log_every": 10},
                   output={"checkpoint_every": 20})
    summary = run_distill(parse_config(data, DistillConfig))
    print(summary.text())
    assert (summary.stage, summary.steps, summary.teacher) == (2, 20, "sam2_tiny_test")
    assert math.isfinite(summary.first_loss) and summary.final_loss < summary.first_loss
    last = summary.validation_final
    assert {"val_agreement_miou", "val_agreement_box_miou", "val_box_miou",
            "val_high_res_mse"} <= last.keys()
    assert 0 <= last["val_agreement_miou"] <= 100
    start = build_model("efficientvit_sam2_tiny_test", checkpoint=efficientvit_stage1.checkpoint)
    student = build_model("efficientvit_sam2_tiny_test", checkpoint=summary.checkpoint,
                          sha256=summary.sha256)
    assert list(torch.load(summary.checkpoint, map_location="cpu", weights_only=True)) == \
        ["model"]
    moved = {k for k, v in student.state_dict().items()
             if not torch.equal(v, start.state_dict()[k])}
    # EdgeSAM freezes the prompt encoder; encoder (its projections too) and decoder train
    assert not {k for k in moved if k.startswith("sam_prompt_encoder.")}
    assert {"image_encoder.high_res_s4.weight", "sam_mask_decoder.conv_s0.weight"} <= moved
    assert any(k.startswith("image_encoder.backbone.") for k in moved)


def test_what_a_sam2_pair_cannot_do_is_refused_before_ray(corpus, tmp_path):
    # a SAM 1 design of the same embedding shape: another frame (and other heads)
    with pytest.raises(ConfigError, match="student.name: expected a model in the teacher's "
                                          "stretch frame"):
        run_distill(parse_config(_stage1(corpus, tmp_path, student={"name": "mobile_sam_demo"}),
                                 DistillConfig))
    # ... in stage 2 too
    with pytest.raises(ConfigError, match="student.name: expected a model in the teacher's "
                                          "stretch frame"):
        run_distill(parse_config(_stage1(corpus, tmp_path, stage=2,
                                         student={"name": "mobile_sam_demo"},
                                         data={"corpus": [corpus[0]]}), DistillConfig))
    # stage 2 of a SAM 2 student is a valid config
    cfg = parse_config(_stage1(corpus, tmp_path, stage=2), DistillConfig)
    assert cfg.stage == 2 and cfg.student.name == "mobile_sam2_tiny_test"
    # teacher targets need the teacher's maps: a corpus embedded without output.high_res
    _, bare = make_corpus(tmp_path / "bare", shards=2, per_shard=1, teacher="sam2_tiny_test")
    with pytest.raises(ConfigError, match="data.embeddings: expected the SAM 2 teacher's "
                                          "high-res maps"):
        run_distill(parse_config(stage1_config(bare, tmp_path, "mobile_sam2_tiny_test", 4, 1,
                                               "bare", stage=2), DistillConfig))
