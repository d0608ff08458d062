"""Prompt dicts, PromptSet arrays and the prompt sources (SA-1B json, COCO JSON, Parquet)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.config import PromptsConfig
from operators.prompted.prompts import PromptSet, make_prompt
from operators.prompted.sources import (
    CocoPrompts,
    ParquetPrompts,
    load_prompt_source,
    sa1b_prompts,
)


def test_make_prompt_normalises_and_refuses_what_it_cannot_use():
    p = make_prompt([1, 2, 3, 4], [[5, 6]], category_id=3, score=0.5)
    assert p == {"box": [1.0, 2.0, 3.0, 4.0], "points": [[5.0, 6.0]], "labels": [1],
                 "category_id": 3, "category": None, "score": 0.5, "source_id": None}
    with pytest.raises(ValueError, match="a box or at least one point"):
        make_prompt()
    with pytest.raises(ValueError, match="box of 4 numbers"):
        make_prompt([1, 2, 3])
    with pytest.raises(ValueError, match="one label per point"):
        make_prompt(None, [[1, 2]], [1, 0])
    with pytest.raises(ValueError, match="labels 1 .* or 0"):
        make_prompt(None, [[1, 2]], [2])
    with pytest.raises(ValueError, match="finite number"):
        make_prompt([0, 0, float("nan"), 1])


def test_prompt_set_pads_points_and_groups_by_structure():
    per_image = [[make_prompt([0, 0, 5, 5]), make_prompt(None, [[1, 1], [2, 2]], [1, 0])],
                 [make_prompt(None, [[3, 3]]), make_prompt([1, 1, 4, 4], [[2, 2]]),
                  make_prompt([2, 2, 6, 6])]]
    ps = PromptSet.from_prompts(per_image)
    assert ps.image.tolist() == [0, 0, 1, 1, 1]
    assert ps.points.shape == (5, 2, 2) and ps.labels[2].tolist() == [1, -1]
    assert ps.has_box.tolist() == [True, False, False, True, True]
    assert ps.n_points.tolist() == [0, 2, 1, 1, 0]
    groups = {(b, n): idx.tolist() for b, n, idx in ps.groups()}
    assert groups == {(False, 1): [2], (False, 2): [1], (True, 0): [0, 4], (True, 1): [3]}


def _ann(i: int) -> dict:
    return {"id": 100 + i, "bbox": [i, 2 * i, 10, 20], "point_coords": [[i + 1.5, 3.0]],
            "area": 200, "segmentation": {"size": [1, 1], "counts": "0"}}


def test_sa1b_prompts_take_the_boxes_and_points_asked_for():
    anns = [_ann(1), _ann(2)]
    boxes = sa1b_prompts(anns, "box")
    assert [p["box"] for p in boxes] == [[1.0, 2.0, 11.0, 22.0], [2.0, 4.0, 12.0, 24.0]]
    assert all(p["points"] == [] for p in boxes) and [p["source_id"] for p in boxes] == [101, 102]
    points = sa1b_prompts(anns, "point")
    assert points[0]["box"] is None and points[0]["points"] == [[2.5, 3.0]]
    both = sa1b_prompts(anns, "box+point")
    assert both[1]["box"] == [2.0, 4.0, 12.0, 24.0] and both[1]["labels"] == [1]
    bad = dict(_ann(3))
    del bad["point_coords"]
    with pytest.raises(ValueError, match="expected 'point_coords' in annotation 0"):
        sa1b_prompts([bad], "point")
    source = load_prompt_source(PromptsConfig(source="sa1b", use="box"))
    assert source("sa_1", json.dumps(anns)) == boxes
    with pytest.raises(ValueError, match="without json"):
        source("sa_1", "")


def test_coco_prompts_match_keys_by_file_name_and_carry_categories(tmp_path):
    data = {"images": [{"id": 7, "file_name": "a/sa_1.jpg"}, {"id": 8, "file_name": "x.png"},
                       {"id": 9, "file_name": "b/x.jpg"}],
            "categories": [{"id": 3, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 7, "bbox": [1, 2, 3, 4], "category_id": 3},
                            {"id": 2, "image_id": 7, "bbox": [0, 0, 1, 1], "category_id": 3,
                             "score": 0.25}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    source = CocoPrompts(str(path))
    found = source("sa_1")  # by base name
    assert [p["box"] for p in found] == [[1.0, 2.0, 4.0, 6.0], [0.0, 0.0, 1.0, 1.0]]
    assert [(p["category_id"], p["category"], p["source_id"], p["score"]) for p in found] == \
        [(3, "cat", 1, None), (3, "cat", 2, 0.25)]
    assert source("a/sa_1") == found  # by full key
    assert source("b/x") == [] and source("x") == []  # full keys: b/x.jpg, x.png
    assert source("c/x") is None  # by base name, x is two images: neither
    assert source("sa_2") is None


def test_parquet_prompts_read_boxes_points_and_carried_fields(tmp_path):
    table = pa.table({
        "key": ["sa_1", "img.jpg"],
        "boxes": [[[0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 3.0, 4.0]], [[2.0, 2.0, 9.0, 9.0]]],
        "points": [[[[1.0, 1.0]], [[2.0, 2.0], [0.0, 0.0]]], [[[4.0, 4.0]]]],
        "labels": [[[1], [1, 0]], [[1]]],
        "category": [["dog", "cat"], ["dog"]],
        "score": [[0.9, 0.4], [0.7]],
    })
    pq.write_table(table, tmp_path / "p.parquet")
    both = ParquetPrompts(str(tmp_path), "box+point")
    got = both("sa_1")
    assert [p["box"] for p in got] == [[0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 3.0, 4.0]]
    assert got[1]["points"] == [[2.0, 2.0], [0.0, 0.0]] and got[1]["labels"] == [1, 0]
    assert [(p["category"], p["category_id"], p["score"]) for p in got] == \
        [("dog", None, 0.9), ("cat", None, 0.4)]
    assert both("img")[0]["box"] == [2.0, 2.0, 9.0, 9.0]  # a file name matches its key
    assert ParquetPrompts(str(tmp_path), "box")("sa_1")[1]["points"] == []
    assert both("nope") is None
    pq.write_table(table.drop(["points"]), tmp_path / "p.parquet")
    with pytest.raises(ValueError, match=r"expected columns \['key', 'points'\]"):
        ParquetPrompts(str(tmp_path), "point")
    short = table.set_column(5, "score", pa.array([[0.9], [0.7]]))
    pq.write_table(short, tmp_path / "p.parquet")
    with pytest.raises(ValueError, match="expected 2 entries of `score` for key 'sa_1'"):
        ParquetPrompts(str(tmp_path), "box")("sa_1")
    ids = table.set_column(4, "category", pa.array([[1, 2], [1]]))
    pq.write_table(ids, tmp_path / "p.parquet")
    assert [p["category_id"] for p in ParquetPrompts(str(tmp_path), "box")("sa_1")] == [1, 2]
    assert np.isnan(PromptSet.from_prompts([[make_prompt(None, [[1, 1]])]]).boxes).all()
