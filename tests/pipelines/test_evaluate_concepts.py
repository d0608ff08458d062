"""`samdata evaluate concepts`: box and mask AP of concept-label datasets (declared schema,
tests/concept_labels.py) against a categorised COCO ground truth of the same corpus. Perfect
labels give AP 1; labels with wrong categories and misses give exactly what pycocotools gives
when run directly on the same JSON; labels whose categories the ground truth lacks, class-
agnostic labels, and a ground truth of other images are refused (exit 2, one line); the whole
flow through the CLI on the S3 test server. No Ray (a COCO ground truth needs none)."""

from __future__ import annotations

import json

import pyarrow.dataset as pads
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from operators.shards.sample import write_sample_corpus
from pipelines.cli import main
from pipelines.config import ConfigError, EvaluateConfig, parse_config
from pipelines.evaluate import run_evaluate
from tests.concept_labels import category_of, concept_dataset, ground_truth_json
from tests.support import label_dataset

CONCEPTS = ["dog", "cat", "horse"]  # labels' ids 1, 2, 3
GT_CATEGORIES = [{"id": 3, "name": "Dog"}, {"id": 7, "name": " cat "}, {"id": 9, "name": "bird"}]
GT_ID = {"dog": 3, "cat": 7}  # the labels' names -> the ground truth's ids, as matched


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(root, corpus, gt path): 2 shards x 4 images, the ground truth of its own masks."""
    root = tmp_path_factory.mktemp("concepts_eval")
    corpus = write_sample_corpus(str(root / "corpus"), shards=2, images_per_shard=4, seed=5,
                                 min_side=100, max_side=160, max_shapes=4)
    ground_truth_json(root / "gt.json", corpus, GT_CATEGORIES,
                      {"dog": 3, "cat": 7})
    concept_dataset(root / "perfect", corpus, CONCEPTS)
    return root, corpus, root / "gt.json"


def _cfg(root, labels: dict[str, str], gt) -> EvaluateConfig:
    return parse_config({"protocol": "concepts", "labels": labels,
                         "ground_truth": {"source": "coco", "path": str(gt)},
                         "evaluation": {"all": True}, "output": {"path": str(root / "rep")}},
                        EvaluateConfig)


def _wrong(key: str, k: int) -> str | None:
    """Annotation 0 of odd-numbered images labelled "cat" (it is a dog); annotation 2 missed."""
    if k == 2:
        return None
    return "cat" if k == 0 and int(key.rsplit("_", 1)[-1]) % 2 else category_of(k)


def _score(key: str, k: int) -> float:
    return 0.95 if k == 0 else 0.9 - 0.1 * k  # the wrong ones rank first


def test_perfect_labels_have_ap_one_and_categories_are_reported(data, tmp_path):
    root, _, gt = data
    report = run_evaluate(_cfg(tmp_path, {"perfect": str(root / "perfect")}, gt))
    assert report.images == 8 and report.images_without_ground_truth == 0
    for kind in ("box", "mask"):
        ap = report.results["perfect"]["concepts"][kind]
        assert [ap["AP"], ap["AP50"], ap["AP75"]] == pytest.approx([1.0, 1.0, 1.0])
        assert ap["per_category"] == {"Dog": pytest.approx(1.0), " cat ": pytest.approx(1.0)}
    assert report.categories["perfect"] == {"matched": ["Dog", " cat "],
                                            "labels_only": ["horse"],
                                            "ground_truth_only": ["bird"]}
    text = report.text()
    assert "label categories not in the ground truth, left out: ['horse']" in text
    assert "ground-truth categories never labelled, not evaluated: ['bird']" in text
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "| Model | Box AP | Box AP50 |" in md and "| Category | perfect Box AP |" in md
    with Image.open(tmp_path / "rep" / "results.png") as im:
        assert im.format == "PNG"


def test_wrong_categories_give_what_pycocotools_gives_on_the_same_json(data, tmp_path):
    root, corpus, gt_path = data
    concept_dataset(tmp_path / "wrong", corpus, CONCEPTS, category=_wrong, score=_score)
    report = run_evaluate(_cfg(tmp_path, {"wrong": str(tmp_path / "wrong")}, gt_path))
    ours = report.results["wrong"]["concepts"]
    assert ours["mask"]["AP"] < 0.9
    # The same labels read back with plain pyarrow, against the same JSON, by pycocotools
    gt = COCO(str(gt_path))
    image_of = {img["file_name"][:-4]: img["id"] for img in gt.dataset["images"]}
    rows = pads.dataset(str(tmp_path / "wrong"), format="parquet").to_table().to_pylist()
    for kind, iou_type in (("box", "bbox"), ("mask", "segm")):
        dets = [{"image_id": image_of[r["key"]], "category_id": GT_ID[a["category"]],
                 "score": a["score"],
                 **({"bbox": a["bbox"]} if kind == "box" else
                    {"segmentation": a["segmentation"]})}
                for r in rows for a in r["annotations"]]
        e = COCOeval(gt, gt.loadRes(dets), iou_type)
        e.params.catIds = [3, 7]
        e.evaluate()
        e.accumulate()
        e.summarize()
        direct = [None if s < 0 else float(s) for s in e.stats[:6]]
        assert [ours[kind][k] for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium",
                                        "AP_large")] == pytest.approx(direct)
        precision = e.eval["precision"][:, :, 0, 0, -1]
        assert ours[kind]["per_category"]["Dog"] == pytest.approx(
            float(precision[precision > -1].mean()))


def _err(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.strip().splitlines()
            if ln.startswith("samdata ")]


def _cli(root, labels: str, gt, *extra: str) -> list[str]:
    return ["evaluate", "concepts", "--all", "--labels", f"x={labels}", "--out",
            str(root / "report"), "--set", "ground_truth.source=coco",
            "--set", f"ground_truth.path={gt}", *extra]


def test_labels_sharing_no_category_with_the_ground_truth_are_refused(data, tmp_path, capsys):
    root, corpus, gt = data
    concept_dataset(tmp_path / "zoo", corpus, ["zebra", "horse"],
                    category=lambda key, k: "zebra")
    assert main(_cli(tmp_path, str(tmp_path / "zoo"), gt)) == 2
    err = _err(capsys)
    assert len(err) == 1 and "share no category" in err[0]
    assert "['Dog', ' cat ', 'bird']" in err[0] and "['zebra', 'horse']" in err[0]
    assert not (tmp_path / "report").exists()  # nothing measured, nothing written


def test_class_agnostic_labels_and_other_images_are_refused(data, tmp_path, capsys):
    root, corpus, gt = data
    label_dataset(tmp_path / "plain", corpus)
    assert main(_cli(tmp_path, str(tmp_path / "plain"), gt)) == 2
    err = _err(capsys)
    assert len(err) == 1 and "expected concept labels" in err[0] and "proposals" in err[0]
    # a ground truth of another corpus with the same keys and sizes: other bytes
    other = write_sample_corpus(str(tmp_path / "other"), shards=2, images_per_shard=4, seed=6,
                                min_side=100, max_side=160, max_shapes=4)
    concept_dataset(tmp_path / "other_labels", other, CONCEPTS)
    assert main(_cli(tmp_path, str(tmp_path / "other_labels"), gt)) == 2
    err = _err(capsys)
    assert len(err) == 1 and "do not belong together" in err[0]


def test_config_names_the_field():
    base = {"protocol": "concepts", "output": {"path": "r"}}
    with pytest.raises(ConfigError, match="labels: expected at least one label dataset"):
        parse_config({**base, "ground_truth": {"source": "coco", "path": "g.json"}},
                     EvaluateConfig)
    with pytest.raises(ConfigError, match="ground_truth.source: expected 'coco' for concepts"):
        parse_config({**base, "labels": {"x": "l"}}, EvaluateConfig)


def test_s3_labels_and_ground_truth_through_the_cli(data, s3_bucket, s3_endpoint, tmp_path,
                                                    capsys):
    root, _, gt = data
    fs, bucket = s3_bucket
    fs.put(str(root / "perfect"), f"{bucket}/labels", recursive=True)
    fs.put(str(root / "perfect.samdata"), f"{bucket}/labels.samdata", recursive=True)
    fs.put(str(gt), f"{bucket}/gt.json")
    assert main(["evaluate", "concepts", "--all", "--labels", f"sam3=s3://{bucket}/labels",
                 "--out", f"s3://{bucket}/report", "--set", "ground_truth.source=coco",
                 "--set", f"ground_truth.path=s3://{bucket}/gt.json",
                 "--set", f"storage.endpoint_url={s3_endpoint}"]) == 0
    out = capsys.readouterr().out
    line = json.loads(out.strip().splitlines()[-1])
    assert line["images"] == 8 and line["categories"]["sam3"]["labels_only"] == ["horse"]
    assert line["results"]["sam3"]["concepts"]["mask"]["AP"] == pytest.approx(1.0)
    assert "| sam3 |" in out
    assert json.loads(fs.cat_file(f"{bucket}/report/results.json"))["results"] == \
        line["results"]
