"""`samdata distill` with a SAM 2.1 teacher: sam2_tiny_test's corpus (embedding and high-res
maps) trains mobile_sam2_tiny_test's encoder on Ray Train; the file loads back strictly with the
teacher's SAM 2 heads; what is not built is refused before Ray starts."""

from __future__ import annotations

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


def test_what_a_sam2_pair_cannot_do_is_refused_before_ray(corpus, tmp_path):
    # a SAM 1 design of the same embedding shape: another frame (and other heads)
    with pytest.raises(ConfigError, match="student.name: expected a model in the teacher's "
                                          "stretch frame"):
        run_distill(parse_config(_stage1(corpus, tmp_path, student={"name": "mobile_sam_demo"}),
                                 DistillConfig))
    # stage 2 with a SAM 2 student: refused when the config is read
    with pytest.raises(ConfigError, match="stage: expected 1 for a SAM 2 student"):
        parse_config(_stage1(corpus, tmp_path, stage=2), DistillConfig)
    # stage 2 on a SAM 2 teacher's corpus, whatever the student
    with pytest.raises(ConfigError, match="stage: expected 1 with a SAM 2 teacher"):
        run_distill(parse_config(_stage1(corpus, tmp_path, stage=2,
                                         student={"name": "mobile_sam_demo"},
                                         data={"corpus": [corpus[0]]}), DistillConfig))
