"""The seeded sample (nested, order-free) and the ground truth of the evaluated images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from operators.config import GroundTruthConfig, InputConfig
from operators.evaluation.ground_truth import (
    coco_annotations,
    instance_masks,
    load_ground_truth,
    to_rle,
)
from operators.evaluation.sampling import census, choose_sample, read_annotations
from operators.shards.sample import write_sample_corpus


def _rows(n_shards: int, per_shard: int, seed: int) -> list[dict]:
    from operators.evaluation.sampling import sample_score

    return [{"shard": f"s{s}", "key": f"k{k}", "score": sample_score(seed, f"s{s}", f"k{k}")}
            for s in range(n_shards) for k in range(per_shard)]


def test_sample_is_seeded_nested_and_order_free():
    rows = _rows(4, 50, seed=0)
    small, large = choose_sample(rows, 20), choose_sample(rows, 60)
    pairs = {(s, k) for s, ks in small.items() for k in ks}
    assert len(pairs) == 20 and len({(s, k) for s, ks in large.items() for k in ks}) == 60
    assert pairs <= {(s, k) for s, ks in large.items() for k in ks}
    assert choose_sample(rows[::-1], 20) == small  # the order rows arrive in does not matter
    assert len(small) > 1  # drawn across shards
    other = choose_sample(_rows(4, 50, seed=1), 20)
    assert other != small
    assert sum(map(len, choose_sample(rows, 1000).values())) == 200  # all, when fewer
    with pytest.raises(ValueError, match="sample size >= 1"):
        choose_sample(rows, 0)


def test_census_and_annotations_of_a_shard(tmp_path):
    path = write_sample_corpus(str(tmp_path), shards=1, images_per_shard=4, seed=2)[0]
    item = {"shard": "sa_000000", "url": path, "container": "tar"}
    scores = list(census(item, InputConfig(urls=["-"]), seed=0))
    assert [r["key"] for r in scores] == ["sa_1", "sa_2", "sa_3", "sa_4"]
    assert all(0 <= r["score"] < 2**63 for r in scores)
    got = list(read_annotations(dict(item, keys=["sa_2", "sa_4"])))
    assert [r["key"] for r in got] == ["sa_2", "sa_4"]
    instances = load_ground_truth(GroundTruthConfig())(got[0]["key"],
                                                       got[0]["annotations_json"])
    assert instances and all(set(i) == {"id", "bbox", "area", "segmentation", "iscrowd"}
                             for i in instances)


def test_polygons_and_rles_decode_to_the_same_mask(tmp_path):
    h, w = 20, 30
    mask = np.zeros((h, w), dtype=bool)
    mask[4:10, 5:15] = True
    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    as_text = {"size": [h, w], "counts": compressed["counts"].decode()}
    counts, value, run = [], False, 0
    for v in mask.flatten(order="F"):  # uncompressed RLE, column-major runs from a 0-run
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    polygon = [[5, 4, 15, 4, 15, 10, 5, 10]]
    for seg in (as_text, {"size": [h, w], "counts": counts}):
        assert (mask_utils.decode(to_rle(seg, h, w)).astype(bool) == mask).all()
    assert mask_utils.area(to_rle(polygon, h, w)) > 0
    with pytest.raises(ValueError, match="size"):
        to_rle(as_text, h + 1, w)
    inst = [{"id": 3, "bbox": [5, 4, 10, 6], "area": 60.0, "segmentation": as_text,
             "iscrowd": 1}]
    assert (instance_masks(inst, h, w)[0] == mask).all()
    (ann,) = coco_annotations(inst, image_id=7, first_id=5, h=h, w=w)
    assert (ann["id"], ann["image_id"], ann["iscrowd"], ann["area"]) == (5, 7, 1, 60.0)
    coco = {"images": [{"id": 1, "file_name": "sa_9.jpg", "height": h, "width": w}],
            "annotations": [{"id": 1, "image_id": 1, "bbox": [5, 4, 10, 6], "area": 60,
                             "segmentation": polygon, "category_id": 1}],
            "categories": [{"id": 1, "name": "x"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    source = load_ground_truth(GroundTruthConfig(source="coco", path=str(path)))
    assert source("sa_9")[0]["segmentation"] == polygon and source("sa_8") is None
