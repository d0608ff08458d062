"""The field types every section that names a model shares (model, teacher, student): the
same refusal, naming the field, whichever section holds it."""

import pytest

from pipelines.config import ConfigError, DistillConfig, EmbedConfig, parse_config

GOOD_SHA = "ab" * 32


def _embed(model: dict) -> dict:
    return {"input": {"urls": ["./x"]}, "output": {"path": "./y"}, "model": model}


def _distill(**sections) -> dict:
    return {"stage": 1, "data": {"embeddings": "./e"}, "output": {"path": "./o"}, **sections}


@pytest.mark.parametrize("data, cls, field", [
    (_embed({"name": "sam_vit_x"}), EmbedConfig, "model.name"),
    (_distill(student={"name": "sam_vit_x"}), DistillConfig, "student.name"),
    (_distill(teacher={"name": "sam_vit_x"}), DistillConfig, "teacher.name"),
])
def test_unknown_model_names_are_refused_naming_the_field(data, cls, field):
    with pytest.raises(ConfigError, match=rf"{field}: expected one of sam_vit_h, .*sam_tiny, "
                                          rf".* got 'sam_vit_x'"):
        parse_config(data, cls)


@pytest.mark.parametrize("data, cls, field", [
    (_embed({"name": "sam_tiny", "sha256": "abc"}), EmbedConfig, "model.sha256"),
    (_distill(student={"sha256": "g" * 64}), DistillConfig, "student.sha256"),
    (_distill(teacher={"sha256": "a" * 63}), DistillConfig, "teacher.sha256"),
])
def test_malformed_digests_are_refused_naming_the_field(data, cls, field):
    with pytest.raises(ConfigError, match=rf"{field}: expected 64 hex digits"):
        parse_config(data, cls)


def test_good_names_and_digests_pass_through_unchanged():
    cfg = parse_config(_embed({"name": "sam_tiny", "sha256": GOOD_SHA.upper()}), EmbedConfig)
    assert (cfg.model.name, cfg.model.sha256) == ("sam_tiny", GOOD_SHA.upper())
    cfg = parse_config(_distill(teacher={"name": None, "sha256": GOOD_SHA},
                                student={"name": "mobile_sam_tiny"}), DistillConfig)
    assert (cfg.teacher.name, cfg.teacher.sha256, cfg.student.name) == (
        None, GOOD_SHA, "mobile_sam_tiny")
