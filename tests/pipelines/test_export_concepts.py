"""Exports of concept labels (schema.CONCEPT_SCHEMA rows, written by tests/concept_labels.py):
COCO has one category per concept of the job, under its stable id, every annotation under its
concept's id; YOLO's class is category_id - 1 with the whole list as names; the mask PNG
format's metadata.csv names the category; class-agnostic labels keep the one "object"
category; two concept lists in one dataset are refused. No Ray."""

from __future__ import annotations

import csv
import io
import json

import pyarrow.parquet as pq
import pytest
import yaml
from pycocotools.coco import COCO

from operators.dataset.maskset import iter_rows
from operators.shards.sample import write_sample_corpus
from pipelines.cli import main
from tests.concept_labels import category_of, concept_dataset
from tests.support import label_dataset

CONCEPTS = ["dog", "cat", "horse"]  # ids 1, 2, 3; no image has a horse


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("concepts")
    return root, write_sample_corpus(str(root / "corpus"), shards=2, images_per_shard=3, seed=4,
                                     min_side=64, max_side=96, max_shapes=4)


def test_rows_in_the_declared_schema_read_back_with_plain_pyarrow(corpus, tmp_path):
    _, shards = corpus
    concept_dataset(tmp_path / "ds", shards, CONCEPTS)
    table = pq.read_table(next((tmp_path / "ds").glob("*/*.parquet")))
    ann_type = table.schema.field("annotations").type.value_type
    names = [ann_type.field(i).name for i in range(ann_type.num_fields)]
    assert names[-3:] == ["category_id", "category", "score"]
    row = table.to_pylist()[0]
    assert {(a["category_id"], a["category"]) for a in row["annotations"]} <= \
        {(1, "dog"), (2, "cat")}
    # an everything-mode dataset keeps exactly the SA-1B fields; readers see no category
    label_dataset(tmp_path / "plain", shards)
    plain = next(iter_rows(str(tmp_path / "plain")))
    assert plain["annotations"][0].get("category") is None
    assert "category" not in plain["annotations"][0]


def test_coco_has_one_category_per_concept_under_its_stable_id(corpus, tmp_path):
    _, shards = corpus
    concept_dataset(tmp_path / "ds", shards, CONCEPTS)
    out = tmp_path / "c.json"
    assert main(["export", str(tmp_path / "ds"), "--format", "coco", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["categories"] == [{"id": 1, "name": "dog", "supercategory": "dog"},
                                  {"id": 2, "name": "cat", "supercategory": "cat"},
                                  {"id": 3, "name": "horse", "supercategory": "horse"}]
    # every annotation under its concept's id, in dataset order, ids from 1
    expected = [(k, category_of(k)) for r in iter_rows(str(tmp_path / "ds"))
                for k, _ in enumerate(r["annotations"])]
    assert [(a["category_id"], a["category"]) for a in data["annotations"]] == \
        [(CONCEPTS.index(c) + 1, c) for _, c in expected]
    assert all(a["score"] == 0.9 for a in data["annotations"])
    image = data["images"][0]
    assert image["samdata_sha256"] and image["samdata_source_uri"].endswith("#" + image[
        "samdata_key"])
    coco = COCO(str(out))
    assert coco.getCatIds() == [1, 2, 3] and len(coco.getAnnIds(catIds=[3])) == 0
    # ids do not depend on which shards are exported, nor on a rerun
    out2 = tmp_path / "one_shard.json"
    assert main(["export", str(tmp_path / "ds"), "--format", "coco", "--out", str(out2),
                 "--shards", "sa_000001..sa_000001"]) == 0
    assert json.loads(out2.read_text())["categories"] == data["categories"]


def test_class_agnostic_labels_keep_the_one_object_category(corpus, tmp_path):
    _, shards = corpus
    label_dataset(tmp_path / "plain", shards)
    assert main(["export", str(tmp_path / "plain"), "--format", "coco",
                 "--out", str(tmp_path / "p.json")]) == 0
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert {a["category_id"] for a in data["annotations"]} == {1}
    assert not any("category" in a for a in data["annotations"])


def test_yolo_class_is_category_id_minus_one_and_masks_name_the_category(corpus, tmp_path):
    _, shards = corpus
    # only cats: first appearance would make "cat" class 0; the concept list says 1
    concept_dataset(tmp_path / "ds", shards, CONCEPTS,
                    category=lambda key, k: "cat" if k % 2 else None)
    assert main(["export", str(tmp_path / "ds"), "--format", "yolo",
                 "--out", str(tmp_path / "y")]) == 0
    data = yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())
    assert data["names"] == {0: "dog", 1: "cat", 2: "horse"} and data["nc"] == 3
    classes = {line.split()[0] for txt in (tmp_path / "y" / "labels").rglob("*.txt")
               for line in txt.read_text().splitlines()}
    assert classes == {"1"}
    assert main(["export", str(tmp_path / "ds"), "--format", "masks",
                 "--out", str(tmp_path / "m")]) == 0
    rows = [r for f in (tmp_path / "m").glob("*/*/metadata.csv")
            for r in csv.DictReader(io.StringIO(f.read_text()))]
    assert rows and {(r["category_id"], r["category"]) for r in rows} == {("2", "cat")}


def test_two_concept_lists_in_one_dataset_are_refused(corpus, tmp_path, capsys):
    _, shards = corpus
    concept_dataset(tmp_path / "ds", shards, CONCEPTS, concepts_of_shard=lambda name:
                    CONCEPTS if name.endswith("0") else ["cat", "dog"])
    code = main(["export", str(tmp_path / "ds"), "--format", "coco",
                 "--out", str(tmp_path / "c.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "expected one concept list in the dataset" in err[0]
    assert "['dog', 'cat', 'horse']" in err[0] and "['cat', 'dog']" in err[0]
