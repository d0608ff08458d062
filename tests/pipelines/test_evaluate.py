"""`samdata evaluate` end to end: on the S3 test server, segment a corpus from its own boxes,
then evaluate box and proposals through the CLI (report files, JSON line, chart); proposal recall
of crafted label datasets against known answers and against a direct pycocotools run."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from operators.evaluation.proposals import AR_KEYS, rank_proposals
from operators.shards.sample import write_sample_corpus
from pipelines.cli import main
from pipelines.config import ConfigError, EvaluateConfig, load_config, parse_config
from pipelines.evaluate import run_evaluate
from tests.support import label_dataset


def _json_line(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_s3_segment_then_evaluate_box_and_proposals(ray_local, s3_bucket, s3_endpoint,
                                                     tmp_path, capsys):
    fs, bucket = s3_bucket
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    write_sample_corpus(f"s3://{bucket}/corpus", shards=2, images_per_shard=2, seed=8,
                        storage_options=opts)
    common = {"input": {"urls": [f"s3://{bucket}/corpus/"]},
              "storage": {"endpoint_url": s3_endpoint}, "model": {"name": "sam_tiny"}}
    # Segment the corpus from its own SA-1B boxes
    seg = tmp_path / "segment.yaml"
    seg.write_text(json.dumps({**common, "output": {"path": f"s3://{bucket}/seg"}}))
    assert main(["segment", "--config", str(seg)]) == 0
    capsys.readouterr()
    # Box protocol on a seeded sample of 3 of the 4 images, two models in one table
    ev = tmp_path / "evaluate.yaml"
    ev.write_text(json.dumps({"protocol": "box", "input": common["input"],
                              "storage": common["storage"],
                              "output": {"path": f"s3://{bucket}/report"}}))
    assert main(["evaluate", "box", "--config", str(ev), "--model", "sam_tiny",
                 "--set", "models=[{name: sam_tiny}, {name: sam_tiny, seed: 1, label: other}]",
                 "--sample", "3"]) == 0
    out = capsys.readouterr().out
    line = _json_line(out)
    assert line["images"] == 3 and line["sample"] == {"size": 3, "all": False, "seed": 0}
    assert list(line["results"]) == ["sam_tiny", "other"]
    box = line["results"]["sam_tiny"]["box"]
    assert box["count_all"] == line["instances"] > 0 and 0 <= box["miou_all"] <= 100
    assert "| Model | Box mIoU |" in out and "RANDOM WEIGHTS" in out
    assert json.loads(fs.cat_file(f"{bucket}/report/results.json"))["results"] == \
        line["results"]
    assert b"| other |" in fs.cat_file(f"{bucket}/report/results.md")
    png = tmp_path / "box.png"
    png.write_bytes(fs.cat_file(f"{bucket}/report/results.png"))
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1500, 560)
    # Proposals: the segment output as a label dataset, the whole corpus
    assert main(["evaluate", "proposals", "--config", str(ev), "--all", "--labels",
                 f"tiny=s3://{bucket}/seg", "--out", str(tmp_path / "proposals")]) == 0
    line = _json_line(capsys.readouterr().out)
    ar = line["results"]["tiny"]["proposals"]
    assert line["images"] == 4 and set(ar) == set(AR_KEYS)
    assert all(v is None or 0 <= v <= 1 for v in ar.values())
    with Image.open(tmp_path / "proposals" / "results.png") as im:
        assert im.format == "PNG"


def test_proposal_recall_known_answers_and_a_direct_cocoeval(ray_local, tmp_path):
    corpus = write_sample_corpus(str(tmp_path / "corpus"), shards=2, images_per_shard=3,
                                 seed=9, min_side=100, max_side=160)
    label_dataset(tmp_path / "all", corpus, lambda k: True)
    label_dataset(tmp_path / "half", corpus, lambda k: k % 2 == 0)
    cfg = parse_config({"protocol": "proposals", "output": {"path": str(tmp_path / "rep")},
                        "labels": {"all": str(tmp_path / "all"), "half": str(tmp_path / "half")},
                        "evaluation": {"all": True}}, EvaluateConfig)
    report = run_evaluate(cfg)
    assert report.images == 6 and not report.images_failed
    full, half = report.results["all"]["proposals"], report.results["half"]["proposals"]
    assert {k: v for k, v in full.items() if v is not None} == \
        {k: pytest.approx(1.0) for k, v in full.items() if v is not None}
    # The exported ground truth and the ranked half, through pycocotools directly
    assert main(["export", str(tmp_path / "all"), "--format", "coco",
                 "--out", str(tmp_path / "gt.json")]) == 0
    gt = COCO(str(tmp_path / "gt.json"))
    dets = []
    for image_id in gt.getImgIds():
        masks = [{"segmentation": a["segmentation"], "predicted_iou": a["predicted_iou"],
                  "stability_score": a["stability_score"]}
                 for n, a in enumerate(gt.loadAnns(gt.getAnnIds(imgIds=[image_id])))
                 if n % 2 == 0]
        dets += [{**d, "category_id": 1} for d in rank_proposals(image_id, masks)]
    e = COCOeval(gt, gt.loadRes(dets), "segm")
    e.params.useCats, e.params.maxDets = 0, [10, 100, 1000]
    e.evaluate()
    e.accumulate()
    e.summarize()
    direct = [None if s < 0 else float(s) for s in e.stats[6:12]]
    assert [half[k] for k in AR_KEYS] == pytest.approx(direct)
    n_kept = sum(1 for i in gt.getImgIds()
                 for n, _ in enumerate(gt.getAnnIds(imgIds=[i])) if n % 2 == 0)
    assert half["AR@1000"] == pytest.approx(n_kept / len(gt.getAnnIds()))  # kept: exact
    assert (tmp_path / "rep" / "results.md").read_text().count("|") > 10


def test_shipped_config_and_refusals():
    cfg = load_config("configs/evaluate_sa1b.yaml", cls=EvaluateConfig)
    assert cfg.protocol == "box" and cfg.evaluation.sample == 1000
    assert cfg.evaluation.clicks == [1, 3, 5] and len(cfg.models) == 2
    with pytest.raises(ConfigError, match="reference: expected the reference"):
        load_config("configs/evaluate_sa1b.yaml", ["protocol=agreement"], EvaluateConfig)
    with pytest.raises(ConfigError, match="models: expected distinct row names"):
        load_config("configs/evaluate_sa1b.yaml", ["models=[{name: sam_tiny}, {name: sam_tiny}]"],
                    EvaluateConfig)
    with pytest.raises(ConfigError, match="evaluation.clicks: expected distinct click counts"):
        load_config("configs/evaluate_sa1b.yaml", ["evaluation.clicks=[0, 1]"], EvaluateConfig)
    assert main(["evaluate", "proposals", "--config", "configs/evaluate_sa1b.yaml"]) == 2
