"""Concept labeling end to end on the S3 test server, as a user runs it: `samdata autolabel`
with a concept model (sam3_tiny_test, random weights, our own small vocabulary) and
prompts.concepts (inline, then a file on S3) -> rows with categories that plain pyarrow reads
-> `samdata export --format coco` that pycocotools loads with the concepts as categories ->
`samdata evaluate concepts` against a categorised ground truth of the corpus's exact masks.
Reruns resume (same concepts) or are refused (others); every misconfiguration of a concept job
is a one-line error and exit 2 before Ray starts."""

from __future__ import annotations

import json
import random

import pyarrow.dataset as pads
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from models import build_model
from operators.shards.sample import write_sample_corpus
from pipelines.cli import main
from pipelines.config import AutolabelConfig, load_config
from tests.concept_labels import ground_truth_json
from tests.sam3_vocab import PHRASES, write_vocab

CONCEPTS = ["circle", "square", "triangle"]
THRESHOLD = 0.3  # random weights score near 0.5: most queries pass, some do not
CONFIG = "configs/autolabel_concepts.yaml"


def _summary(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _autolabel(*sets: str) -> int:
    return main(["autolabel", "--config", CONFIG, "--set", "model.name=sam3_tiny_test",
                 "--set", "model.checkpoint=null", "--set", "compute.ray_batch_size=2",
                 "--set", f"prompts.score_threshold={THRESHOLD}",
                 *[w for s in sets for w in ("--set", s)]])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small sample corpus (2 shards of 2 images) and our test vocabulary, on disk."""
    root = tmp_path_factory.mktemp("concept-corpus")
    shards = write_sample_corpus(str(root / "corpus"), shards=2, images_per_shard=2, seed=5,
                                 min_side=64, max_side=96, max_shapes=3)
    return root, shards, write_vocab(root / "vocab.txt.gz")


def test_s3_concepts_to_rows_coco_and_ap(ray_local, s3_bucket, s3_endpoint, corpus, tmp_path,
                                         capsys):
    root, shards, vocab = corpus
    fs, bucket = s3_bucket
    fs.put(str(root / "corpus"), f"{bucket}/corpus", recursive=True)
    fs.put(str(vocab), f"{bucket}/weights/vocab.txt.gz")
    common = (f"input.urls=[s3://{bucket}/corpus/]", f"storage.endpoint_url={s3_endpoint}",
              f"model.vocabulary=s3://{bucket}/weights/vocab.txt.gz")
    labels = f"s3://{bucket}/labels"

    # Inline concepts: every image labelled, every annotation one of the concepts
    assert _autolabel(*common, f"output.path={labels}",
                      f"prompts.concepts={json.dumps(CONCEPTS)}") == 0
    out = capsys.readouterr().out
    summary = _summary(out)
    assert (summary["images_ok"], summary["images_failed"], summary["shards_done"]) == (4, 0, 2)
    assert summary["categories"] == CONCEPTS and summary["masks_processed"] > 0
    assert (f"{summary['masks_processed']} instances of 3 categories (circle, square, "
            f"triangle) in the 4 images") in out
    table = pads.dataset(f"{bucket}/labels", filesystem=fs, format="parquet").to_table()
    assert table.num_rows == 4
    seen = set()
    for row in table.to_pylist():
        assert row["status"] == "ok" and row["model"] == "sam3_tiny_test"
        assert json.loads(row["settings"]) == {"concepts": CONCEPTS,
                                                "score_threshold": THRESHOLD}
        for k, a in enumerate(row["annotations"]):
            assert a["id"] == k and a["category"] in CONCEPTS
            assert a["category_id"] == CONCEPTS.index(a["category"]) + 1
            assert THRESHOLD <= a["score"] <= 1 and a["predicted_iou"] == a["score"]
            rle = {"size": a["segmentation"]["size"],
                   "counts": a["segmentation"]["counts"].encode()}
            assert mask_utils.decode(rle).shape == (row["height"], row["width"])
            assert int(mask_utils.area(rle)) == a["area"] > 0
            seen.add(a["category"])
    assert seen == set(CONCEPTS)

    # The same command again: nothing to do. Other concepts on this output: refused
    assert _autolabel(*common, f"output.path={labels}",
                      f"prompts.concepts={json.dumps(CONCEPTS)}") == 0
    again = _summary(capsys.readouterr().out)
    assert (again["images_processed"], again["shards_skipped"]) == (0, 2)
    assert _autolabel(*common, f"output.path={labels}", "prompts.concepts=[circle, square]") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "settings.prompts.concepts" in err
    # Another vocabulary (other merges: other token ids) on this output: refused
    fs.pipe_file(f"{bucket}/weights/other.txt.gz", write_vocab(
        tmp_path / "other.txt.gz", phrases=PHRASES[:25]).read_bytes())
    assert _autolabel(*common[:2], f"model.vocabulary=s3://{bucket}/weights/other.txt.gz",
                      f"output.path={labels}", f"prompts.concepts={json.dumps(CONCEPTS)}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vocabulary_sha256" in err

    # A concepts file on S3 (comments and blank lines skipped): the file's names, in order
    fs.pipe_file(f"{bucket}/concepts.txt", b"# shapes\ntriangle\n\ncircle\n")
    assert _autolabel(*common, f"output.path=s3://{bucket}/labels-file",
                      f"prompts.concepts=s3://{bucket}/concepts.txt") == 0
    assert _summary(capsys.readouterr().out)["categories"] == ["triangle", "circle"]
    rows = pads.dataset(f"{bucket}/labels-file", filesystem=fs, format="parquet").to_table() \
        .to_pylist()
    anns = [a for r in rows for a in r["annotations"]]
    assert anns and {(a["category_id"], a["category"]) for a in anns} <= \
        {(1, "triangle"), (2, "circle")}

    # COCO export: the 3 concepts as categories, every annotation under one of them
    coco_path = tmp_path / "instances.json"
    assert main(["export", labels, "--format", "coco", "--out", str(coco_path),
                 "--endpoint-url", s3_endpoint]) == 0
    capsys.readouterr()
    coco = COCO(str(coco_path))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == \
        [(1, "circle"), (2, "square"), (3, "triangle")]
    assert len(coco.getImgIds()) == 4 and len(coco.getAnnIds()) == summary["masks_processed"]
    results = coco.loadRes(json.loads(coco_path.read_text())["annotations"])
    assert len(results.getAnnIds()) == summary["masks_processed"]

    # evaluate concepts against the corpus's exact masks, named by their index in the image
    gt = tmp_path / "gt.json"
    ground_truth_json(gt, shards, [{"id": i + 1, "name": n} for i, n in enumerate(CONCEPTS)],
                      category=lambda k: CONCEPTS[k % 3])
    assert main(["evaluate", "concepts", "--all", "--labels", f"sam3={labels}", "--out",
                 str(tmp_path / "report"), "--set", "ground_truth.source=coco",
                 "--set", f"ground_truth.path={gt}",
                 "--set", f"storage.endpoint_url={s3_endpoint}"]) == 0
    report = _summary(capsys.readouterr().out)
    assert report["images"] == 4 and report["random_weights"] == ["sam3"]
    assert report["categories"]["sam3"]["labels_only"] == []
    for kind in ("box", "mask"):
        numbers = report["results"]["sam3"]["concepts"][kind]
        for key in ("AP", "AP50", "AP75"):
            assert 0.0 <= numbers[key] <= 1.0, (kind, key, numbers[key])
        assert set(numbers["per_category"]) <= set(CONCEPTS)
    assert (tmp_path / "report" / "results.json").exists()


@pytest.fixture()
def no_ray(monkeypatch):
    """Ray must not start: a refusal comes before it (init_ray would make main return 1)."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray started")
    monkeypatch.setattr("pipelines.runner.init_ray", refuse)


def _refused(capsys, *sets: str) -> str:
    assert _autolabel(*sets) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "Ray started" not in err
    return err


def test_concept_jobs_that_cannot_work_are_refused_before_ray(corpus, tmp_path, capsys,
                                                              no_ray):
    root, _, vocab = corpus
    base = (f"input.urls=[{root / 'corpus'}]", f"output.path={tmp_path / 'out'}")
    concepts = "prompts.concepts=[circle]"
    # a concept model without concepts; concepts for an everything-mode model
    assert "prompts.concepts: expected the concept names to label with sam3_tiny_test" in \
        _refused(capsys, *base, f"model.vocabulary={vocab}", "prompts.concepts=null")
    err = _refused(capsys, *base, concepts, "model.name=sam_tiny")
    assert "prompts.concepts: expected a concept model (sam3, " in err
    assert err.endswith("got 'sam_tiny' (everything mode: class-agnostic masks; leave "
                        "prompts.concepts out)")
    # no vocabulary known (random weights, none named); a vocabulary that is not there
    err = _refused(capsys, *base, concepts)
    assert err.endswith("expected the tokenizer's vocabulary file of sam3_tiny_test "
                        "(bpe_simple_vocab_16e6.txt.gz, given beside the checkpoint or named "
                        "here), got none") and len(err.splitlines()) == 1
    err = _refused(capsys, *base, concepts, f"model.vocabulary={tmp_path / 'none.gz'}")
    assert "model.vocabulary: expected the SAM 3 BPE vocabulary file" in err
    assert "got no file there" in err and len(err.splitlines()) == 1
    # a concepts file that is not there
    err = _refused(capsys, *base, f"model.vocabulary={vocab}",
                   f"prompts.concepts={tmp_path / 'concepts.txt'}")
    assert err.endswith("which is not there") and len(err.splitlines()) == 1
    # with random weights a vocabulary larger than the token table (1024 rows) is refused
    big = write_vocab(tmp_path / "big.gz", 700, PHRASES + _words(150))
    err = _refused(capsys, *base, concepts, f"model.vocabulary={big}")
    assert err.endswith(f"expected at most 1024 tokens (the token table of sam3_tiny_test), "
                        f"got 1214 tokens in '{big}'")


def test_a_checkpoint_needs_its_own_vocabulary_size(corpus, tmp_path, capsys, no_ray):
    """With a checkpoint the vocabulary must have exactly its table's tokens: the default one
    beside the checkpoint is read, and the test vocabulary (814 tokens) is refused."""
    from pipelines.preflight import preflight_job

    root, _, vocab = corpus
    checkpoint = tmp_path / "weights" / "sam3_tiny.pt"
    checkpoint.parent.mkdir()
    state = build_model("sam3_tiny_test").state_dict()  # the official layout: detector.*
    torch.save({"model": {f"detector.{k}": v for k, v in state.items()}}, checkpoint)
    base = (f"input.urls=[{root / 'corpus'}]", f"output.path={tmp_path / 'out'}",
            "prompts.concepts=[circle]")
    sets = ["--set", "model.name=sam3_tiny_test", "--set", f"model.checkpoint={checkpoint}"]
    err = _refused(capsys, *base, f"model.vocabulary={vocab}", f"model.checkpoint={checkpoint}")
    assert err.endswith(f"model.vocabulary: expected the official vocabulary of sam3_tiny_test "
                        f"(1024 tokens, bpe_simple_vocab_16e6.txt.gz), got 814 tokens in "
                        f"'{vocab}'")
    err = _refused(capsys, *base, f"model.checkpoint={checkpoint}")  # nothing beside it yet
    assert f"at '{checkpoint.parent}/bpe_simple_vocab_16e6.txt.gz', got no file there" in err
    # a vocabulary of 1024 tokens beside the checkpoint passes every check
    write_vocab(checkpoint.parent / "bpe_simple_vocab_16e6.txt.gz", 510, PHRASES + _words(150))
    cfg = load_config(CONFIG, [s for s in sets if s != "--set"] + list(base), AutolabelConfig)
    assert preflight_job(cfg) is not None


def _words(n: int) -> list[str]:
    """n phrases of seeded random letters (more merges than PHRASES alone give)."""
    rng = random.Random(0)
    return [" ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                             for _ in range(rng.randint(3, 8))) for _ in range(4))
            for _ in range(n)]


def test_shipped_concepts_config_is_valid():
    cfg = load_config(CONFIG, cls=AutolabelConfig)
    assert cfg.model.name == "sam3" and cfg.model.vocabulary is None
    assert cfg.model.vocabulary_path() == "s3://my-bucket/weights/bpe_simple_vocab_16e6.txt.gz"
    assert cfg.prompts.concepts[:2] == ["person", "car"] and cfg.prompts.score_threshold == 0.5


def test_the_run_summary_names_the_categories():
    from pipelines.runner import RunSummary

    summary = RunSummary(job="autolabel", output="o", model="sam3", random_weights=False,
                         images_processed=2, masks_processed=7,
                         categories=[f"c{i}" for i in range(8)])
    assert "  7 instances of 8 categories (c0, c1, c2, c3, c4 and 3 more) in the 2 images of " \
        "this run" in summary.text()
    assert "masks" not in summary.text()


def test_models_lists_sam3_with_its_vocabulary_and_smoke_points_to_autolabel(capsys):
    assert main(["models"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert "sam3.pt + bpe_simple_vocab_16e6.txt.gz beside it" in lines["sam3"]
    assert "autolabel with prompts.concepts" in lines["sam3_tiny_test"]
    assert main(["smoke", "--model", "sam3_tiny_test"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("samdata smoke: --model: expected a model that takes point prompts, got "
                   "'sam3_tiny_test' (a concept model: it takes text; label with `samdata "
                   "autolabel` and prompts.concepts)")
