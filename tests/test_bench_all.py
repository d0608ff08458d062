"""bench/all.py: finding each script's JSON in its output, and the headline table."""

from __future__ import annotations

import json

import pytest

from bench.all import SUITES, headline, last_json, markdown


def test_last_json_takes_the_final_object_on_one_line_or_indented():
    noise = "2026-11-25 INFO worker.py: started\n{not json\n"
    assert last_json(noise + json.dumps({"a": 1})) == {"a": 1}
    assert last_json(noise + '{"a": 0}\n' + json.dumps({"b": [1, 2]}, indent=1)) == {"b": [1, 2]}
    assert last_json(json.dumps({"c": 3}) + "\n(raylet) late worker line\n") == {"c": 3}
    with pytest.raises(ValueError, match="expected a JSON object"):
        last_json("Traceback (most recent call last):\n  ...\n")


def test_headline_reports_targets_and_failed_parts():
    parts = {
        "memory": {"runs": [{"shards": 10}, {"shards": 40}],
                   "peak_rss_ratio_largest_to_smallest": 1.01},
        "everything": {"points_per_side": 32, "results": [
            {"model": "mobile_sam", "mode": "point grid", "images_per_s": 21.5},
            {"model": "fastsam_s", "mode": "one-pass", "images_per_s": 90.0}]},
        "embed": {"failed": 1, "stderr": "CUDA out of memory"},
    }
    rows = headline(parts)
    assert ("peak RSS 40 vs 10 shards", "<= 1.2", 1.01) in rows
    assert ("everything mode img/s, mobile_sam, 32x32", ">= 20 (H100, 32x32)", 21.5) in rows
    assert ("everything mode img/s, fastsam_s", ">= 20 (H100, 32x32)", 90.0) in rows
    assert ("embed: FAILED", "-", 1) in rows
    table = markdown(rows).splitlines()
    assert table[0] == "| figure | target | value |" and len(table) == 2 + len(rows)


def test_headline_has_the_sam2_figures():
    parts = {
        "sam2_encoders": {"encoders": {"results": [
            {"model": "sam2_1_hiera_t", "encoder_images_per_s": 0.15, "x_sam_vit_h": 20.0},
            {"model": "sam_vit_h", "encoder_images_per_s": 0.0075, "x_sam_vit_h": 1.0}]}},
        "sam2_everything": {"everything": {"model": "sam2_tiny_test", "images": 2,
                                           "speedup": 1.3, "masks_iou_ge_0.9": 1.0}},
    }
    rows = headline(parts)
    assert ("encoder img/s, sam2_1_hiera_t (x sam_vit_h: 20.0)", "-", 0.15) in rows
    assert ("ours / official SAM2AutomaticMaskGenerator (sam2_tiny_test, 2 images)", "-",
            1.3) in rows
    assert ("SAM 2 masks at IoU >= 0.9 to the official", ">= 0.99", 1.0) in rows
    assert set(SUITES["cpu"]) == set(SUITES["cuda"]) - {"profile"}


def test_every_suite_names_existing_scripts():
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent / "bench"
    for suite in SUITES.values():
        for script, _ in suite.values():
            assert (here / script).is_file(), script


def test_headline_has_the_sam3_figures():
    parts = {
        "sam3_backbone": {"backbone": {"results": [
            {"model": "sam3", "input": 1008, "encoder_images_per_s": 0.02, "x_sam_vit_h": 0.8},
            {"model": "sam_vit_h", "input": 1024, "encoder_images_per_s": 0.025,
             "x_sam_vit_h": 1.0}]}},
        "sam3_concepts": {"concepts": {"model": "sam3_tiny_test", "results": [
            {"concepts": 80, "images_per_s": 0.5, "instances_per_image": 1500.0,
             "backbone_ms_per_image": 3.0, "detector_ms_per_image": 110.0,
             "masks_ms_per_image": 1800.0, "text_ms_once_per_job": 9.5}]}},
    }
    rows = headline(parts)
    assert ("SAM 3 backbone beside SAM / SAM 2.1: img/s, sam3 @1008 (x sam_vit_h: 0.8)", "-",
            0.02) in rows
    assert ("concept labeling img/s, sam3_tiny_test, 80 concepts (1500.0 instances / image)",
            "-", 0.5) in rows
    assert ("  80 concepts, ms per image: backbone / detector / masks", "-",
            "3.0 / 110.0 / 1800.0") in rows
    assert ("  80 concepts, text ms once per job (not per image)", "-", 9.5) in rows
    for device in ("cpu", "cuda"):
        assert SUITES[device]["sam3_backbone"][0] == "sam3_speed.py"
        assert SUITES[device]["sam3_concepts"][1][:2] == ["--part", "concepts"]
