"""`samdata distill` with a SAM 3 teacher: sam3_tiny_test's trunk maps (a `samdata embed`
corpus) train mobile_sam3_tiny_test's trunk on Ray Train; the student file loads strictly with
the teacher's neck, text encoder and detector, and labels concepts; what is not built is
refused before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from models import ConceptModel, build_model
from models.export import head_state_dict
from operators.training.loop import _trainable, build_student, stack_rows
from operators.training.steps import EncoderStep
from pipelines.cli import main
from pipelines.config import ConfigError, DistillConfig, load_config, parse_config
from pipelines.distill import (
    _find_shards,
    _plan,
    _specs,
    _teacher,
    _write_student,
    read_rows,
    run_distill,
    sections_of,
)
from tests.operators.training.corpus import make_corpus, stage1_config, train_losses
from tests.sam3_vocab import write_vocab


def _stage1(corpus: tuple[str, str], out: Path, **sections) -> dict:
    """A stage-1 config: sam3_tiny_test's trunk maps -> mobile_sam3_tiny_test."""
    return stage1_config(corpus[1], out, "mobile_sam3_tiny_test", 24, 3, "sam3",
                         **{"compute": {"log_every": 12}, **sections})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3 shards x 4 images embedded by sam3_tiny_test (seed-0 weights), with the JPEGs."""
    return make_corpus(tmp_path_factory.mktemp("distill_sam3"), shards=3, per_shard=4,
                       teacher="sam3_tiny_test")


@pytest.mark.slow  # ~21 s on 2 shared cores, most of it Ray Train's start
def test_stage1_of_a_sam3_student_learns_and_its_file_loads_strictly(ray_local, corpus,
                                                                      tmp_path):
    summary = run_distill(parse_config(_stage1(corpus, tmp_path / "runs"), DistillConfig))
    assert (summary.steps, summary.total_steps) == (24, 24)
    assert summary.teacher == "sam3_tiny_test"
    assert summary.final_loss < 0.8 * summary.first_loss
    first, last = summary.validation_first, summary.validation_final
    assert set(last) == {"val_images", "val_mse", "val_cosine"}  # no masks: text prompts
    assert last["val_mse"] < 0.8 * first["val_mse"]
    assert last["val_cosine"] > first["val_cosine"]

    # sam3.pt's wrapping ({"model": sd}), loaded with weights_only and strictly
    path = Path(summary.checkpoint)
    assert path == tmp_path / "runs" / "sam3" / "mobile_sam3_tiny_test.pt"
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert list(raw) == ["model"]
    fresh = build_model("mobile_sam3_tiny_test")
    fresh.load_state_dict(raw["model"], strict=True)
    student = build_model("mobile_sam3_tiny_test", checkpoint=path, sha256=summary.sha256)
    assert isinstance(student, ConceptModel)
    # everything but the trunk is the teacher's, bit for bit
    teacher_heads = head_state_dict(build_model("sam3_tiny_test", seed=0))
    heads = head_state_dict(student)
    assert heads.keys() == teacher_heads.keys()
    for k, v in teacher_heads.items():
        assert torch.equal(heads[k], v), k
    # and it labels concepts as SAM 3 does
    student.use_vocabulary(write_vocab(tmp_path / "vocab.txt.gz"))
    images = torch.randint(0, 256, (1, 3, 168, 168), dtype=torch.uint8)
    with torch.no_grad():
        found = student.detect(student.embed_images(images), student.encode_concepts(["cat"]),
                               torch.tensor([0]), torch.tensor([0]))
    assert found.scores.shape == (1, 20) and found.mask_logits.shape == (1, 20, 48, 48)


def test_a_few_stage1_steps_on_the_corpus_make_a_file_that_loads_strictly(corpus, tmp_path):
    """The default suite's run without Ray: the training rows of the corpus as the workers
    read them, a few steps of the stage-1 step, the driver's writer (strict load back)."""
    cfg = parse_config(_stage1(corpus, tmp_path / "runs"), DistillConfig)
    shards, info = _find_shards(cfg)
    assert info.model == "sam3_tiny_test" and tuple(info.shape) == (64, 12, 12)
    name, heads = _teacher(cfg, info)
    plan = _plan(cfg, shards, name)
    spec, _ = _specs(cfg, plan, info)
    rows = read_rows(shards, spec, cfg, 8)
    batch = {k: torch.as_tensor(v) for k, v in stack_rows(rows).items()
             if k in ("pixels", "input_hw", "target", "valid")}
    assert batch["target"].shape == (8, 64, 12, 12) and batch["target"].dtype == torch.float16
    assert batch["valid"].tolist() == [[12, 12]] * 8  # stretched: every cell is image
    model = build_student(sections_of(cfg), heads)
    _trainable(model, ["image_encoder"])
    step = EncoderStep(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = train_losses(step, batch, opt, 6)
    assert losses[-1] < losses[0]
    path, digest = _write_student(cfg, {"model": model.state_dict()})
    raw = torch.load(path, map_location="cpu", weights_only=True)
    build_model("mobile_sam3_tiny_test").load_state_dict(raw["model"], strict=True)
    loaded = build_model("mobile_sam3_tiny_test", checkpoint=path, sha256=digest)
    for k, v in heads.items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_what_a_sam3_pair_cannot_do_is_refused_before_ray(corpus, tmp_path):
    # a SAM 1 design student of a SAM 3 corpus: refused by the pair check, naming the field
    with pytest.raises(ConfigError, match="student.name: expected a SAM 3 student"):
        run_distill(parse_config(_stage1(corpus, tmp_path, student={"name": "mobile_sam_tiny"}),
                                 DistillConfig))
    # stage 2 (the detector in the loop): refused when the config is read
    with pytest.raises(ConfigError, match="stage: expected 1 for a SAM 3 model") as e:
        parse_config(_stage1(corpus, tmp_path, stage=2, data={"corpus": [corpus[0]]}),
                     DistillConfig)
    assert "student.name 'mobile_sam3_tiny_test'" in str(e.value)
    with pytest.raises(ConfigError, match="stage: expected 1 for a SAM 3 model \\(teacher"):
        parse_config(_stage1(corpus, tmp_path, stage=2, student={"name": "mobile_sam_tiny"},
                             teacher={"name": "sam3_tiny_test"}), DistillConfig)
    # mask-level validation settings have nothing to prompt
    for field, value in (("grid", 4), ("max_instances", 8)):
        with pytest.raises(ConfigError, match=f"validation.{field}: expected none for a SAM 3"):
            parse_config(_stage1(corpus, tmp_path, validation={field: value}), DistillConfig)


def test_the_shipped_config_is_valid_and_the_cli_refuses_stage2_with_exit_2(tmp_path, capsys):
    configs = Path(__file__).resolve().parents[2] / "configs"
    cfg = load_config(configs / "distill_sam3_stage1.yaml", [], DistillConfig)
    assert (cfg.stage, cfg.student.name) == (1, "mobile_sam3")
    bad = tmp_path / "stage2.yaml"
    data = yaml.safe_load((configs / "distill_sam3_stage1.yaml").read_text())
    bad.write_text(yaml.safe_dump({**data, "stage": 2, "data": {**data["data"],
                                                                "corpus": ["s3://b/c"]}}))
    assert main(["distill", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "stage: expected 1 for a SAM 3 model (student.name 'mobile_sam3'" in err
