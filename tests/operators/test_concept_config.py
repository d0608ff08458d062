"""Concept models (SAM 3) in the job configs: autolabel needs prompts.concepts with them and
refuses it without them; segment and the model-running evaluate protocols refuse them (they
take text, not one prompt per mask), each naming the field before any work."""

from __future__ import annotations

import pytest

from operators.config import check_concepts, parse_concepts_file
from pipelines.config import (
    AutolabelConfig,
    ConfigError,
    EvaluateConfig,
    SegmentConfig,
    parse_config,
)

JOB = {"input": {"urls": ["s3://b/shards"]}, "output": {"path": "/tmp/out"}}


def test_autolabel_concepts_need_a_concept_model_and_the_reverse():
    cfg = parse_config({**JOB, "model": {"name": "sam3_tiny_test"},
                        "prompts": {"concepts": [" person ", "traffic cone"]}}, AutolabelConfig)
    assert cfg.prompts.concepts == ["person", "traffic cone"]  # stripped, order kept
    assert cfg.prompts.score_threshold == 0.5
    with pytest.raises(ConfigError, match="prompts.concepts: expected the concept names"):
        parse_config({**JOB, "model": {"name": "sam3_tiny_test"}}, AutolabelConfig)
    with pytest.raises(ConfigError, match="prompts.concepts: expected a concept model .*sam3"):
        parse_config({**JOB, "model": {"name": "sam_tiny"}, "prompts": {"concepts": ["a"]}},
                     AutolabelConfig)
    # everything mode is unchanged without the section
    assert parse_config({**JOB, "model": {"name": "sam_tiny"}}, AutolabelConfig).prompts \
        .concepts is None


@pytest.mark.parametrize("names, message", [
    ([], "at least one concept"),
    (["dog", " "], "non-empty names"),
    (["Dog", "dog"], "distinct names, got 'Dog' and 'dog'"),
])
def test_bad_concept_lists_are_refused(names, message):
    with pytest.raises(ValueError, match=message):
        check_concepts(names)
    with pytest.raises(ConfigError, match=f"prompts.concepts: .*{message}"):
        parse_config({**JOB, "model": {"name": "sam3_tiny_test"},
                      "prompts": {"concepts": names}}, AutolabelConfig)


def test_a_concepts_file_skips_blank_lines_and_comments():
    assert parse_concepts_file("# vehicles\ncar\n\n  traffic cone \n#x\nbus\n") == \
        ["car", "traffic cone", "bus"]
    with pytest.raises(ValueError, match="distinct"):
        parse_concepts_file("car\nCar\n")


def test_segment_and_evaluate_refuse_a_concept_model():
    with pytest.raises(ConfigError, match="model: name: expected a model that takes box or point"
                                          " prompts for segment .* got 'sam3'"):
        parse_config({**JOB, "model": {"name": "sam3"}}, SegmentConfig)
    with pytest.raises(ConfigError, match=r"models\[1\].name: .*evaluate box.*'sam3_tiny_test'"):
        parse_config({"protocol": "box", "input": {"urls": ["x"]}, "output": {"path": "/tmp/r"},
                      "models": [{"name": "sam_tiny"}, {"name": "sam3_tiny_test"}]},
                     EvaluateConfig)
