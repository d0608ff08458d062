"""`samdata evaluate` refuses the wrong data instead of measuring it: two sample corpora with
the same keys and image sizes (seeds 0 and 7), ground truth and labels of one used with the
images of the other, label rows with errors, folders without ground truth and malformed
arguments. Each case asserts the exit code and the one line it prints (issue 27)."""

from __future__ import annotations

import json

import pytest

from operators.shards.sample import write_sample_corpus
from pipelines.cli import main
from tests.bad_corpus import jpeg
from tests.support import label_dataset

SIDE = {"min_side": 64, "max_side": 64}  # same sizes in both corpora


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Corpora A (seed 0) and B (seed 7): 3 shards of 8 images, the same keys and sizes;
    label datasets of their own SA-1B masks, and B's ground truth as a samdata COCO export."""
    root = tmp_path_factory.mktemp("corpora")
    a = write_sample_corpus(str(root / "a"), shards=3, images_per_shard=8, seed=0, **SIDE)
    b = write_sample_corpus(str(root / "b"), shards=3, images_per_shard=8, seed=7, **SIDE)
    label_dataset(root / "labels_a", a)
    label_dataset(root / "labels_b", b)
    # A's labels whose rows name B's shards (a moved or mixed-up corpus)
    label_dataset(root / "labels_a_at_b", a, source_of=lambda url: url.replace("/a/", "/b/"))
    # A's labels with 3 images its labeller failed on
    label_dataset(root / "labels_a_failed", a, failed=frozenset({"sa_1", "sa_100002", "sa_200003"}))
    assert main(["export", str(root / "labels_b"), "--format", "coco",
                 "--out", str(root / "gt_b.json")]) == 0
    assert main(["export", str(root / "labels_a"), "--format", "coco",
                 "--out", str(root / "gt_a.json")]) == 0
    return root


def _err(capsys) -> list[str]:
    """samdata's own lines on stderr (Ray's loggers write there too, into whichever stream a
    test captured before)."""
    return [ln for ln in capsys.readouterr().err.strip().splitlines()
            if ln.startswith("samdata ")]


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _proposals(root, labels: str, *extra: str) -> list[str]:
    return ["evaluate", "proposals", "--all", "--labels", f"x={root / labels}",
            "--out", str(root / "report"), *extra]


def test_right_data_is_measured(ray_local, corpora, capsys):
    assert main(_proposals(corpora, "labels_a")) == 0
    line = _json(capsys)
    assert line["images"] == 24 and line["results"]["x"]["proposals"]["AR@100"] == \
        pytest.approx(1.0)
    assert main(_proposals(corpora, "labels_a", "--set", "ground_truth.source=coco",
                           "--set", f"ground_truth.path={corpora / 'gt_a.json'}")) == 0
    assert _json(capsys)["images"] == 24


def test_proposals_against_another_corpus_coco_ground_truth_is_refused(ray_local, corpora,
                                                                      capsys):
    code = main(_proposals(corpora, "labels_a", "--set", "ground_truth.source=coco",
                           "--set", f"ground_truth.path={corpora / 'gt_b.json'}"))
    err = _err(capsys)
    assert code == 2 and len(err) == 1
    assert "do not belong together in 24 image(s)" in err[0] and "other bytes" in err[0]
    assert "sa_000000/sa_" in err[0]


def test_box_against_another_corpus_ground_truth_is_refused(ray_local, corpora, capsys):
    code = main(["evaluate", "box", "--model", "sam_tiny", "--all", "--out",
                 str(corpora / "report_box"), "--set", f"input.urls={corpora / 'a'}",
                 "--set", "ground_truth.source=coco",
                 "--set", f"ground_truth.path={corpora / 'gt_b.json'}"])
    err = _err(capsys)
    assert code == 2 and len(err) == 1 and "ground truth and the images" in err[0]
    assert not (corpora / "report_box").exists()  # refused before any work


def test_labels_whose_source_uri_names_another_corpus_are_refused(ray_local, corpora, capsys):
    code = main(_proposals(corpora, "labels_a_at_b"))
    err = _err(capsys)
    assert code == 2 and len(err) == 1
    assert "labels and the images at their source_uri" in err[0] and "other bytes" in err[0]


def test_failed_label_rows_count_as_recall_zero_or_are_reported_apart(ray_local, corpora,
                                                                      capsys):
    assert main(_proposals(corpora, "labels_a_failed")) == 0
    out = capsys.readouterr().out
    line = json.loads(out.strip().splitlines()[-1])
    assert line["images"] == 24 and line["labels_failed"] == {"x": 3}
    counted = line["results"]["x"]["proposals"]["AR@100"]
    assert counted < 1.0 and "its labeller failed on 3 image(s), counted with recall 0" in out
    assert main(_proposals(corpora, "labels_a_failed", "--set",
                           "evaluation.failed_labels=exclude")) == 0
    out = capsys.readouterr().out
    line = json.loads(out.strip().splitlines()[-1])
    assert line["images"] == 21 and line["results"]["x"]["proposals"]["AR@100"] == \
        pytest.approx(1.0)
    assert "left out of every row" in out


def test_ground_truth_of_other_sizes_is_one_line(ray_local, corpora, tmp_path, capsys):
    other = write_sample_corpus(str(tmp_path / "c"), shards=3, images_per_shard=8, seed=7,
                                min_side=80, max_side=120)
    label_dataset(tmp_path / "labels_c", other)
    assert main(["export", str(tmp_path / "labels_c"), "--format", "coco",
                 "--out", str(tmp_path / "gt_c.json")]) == 0
    gt = json.loads((tmp_path / "gt_c.json").read_text())
    for image in gt["images"]:
        del image["samdata_sha256"]  # a COCO file from elsewhere: only the sizes can tell
    (tmp_path / "gt_c.json").write_text(json.dumps(gt))
    capsys.readouterr()
    code = main(["evaluate", "box", "--model", "sam_tiny", "--all", "--out",
                 str(tmp_path / "rep"), "--set", f"input.urls={corpora / 'a'}",
                 "--set", "ground_truth.source=coco",
                 "--set", f"ground_truth.path={tmp_path / 'gt_c.json'}"])
    err = _err(capsys)
    assert code == 2 and len(err) == 1 and "the image is 64x64" in err[0]


def test_a_folder_without_json_is_refused_before_any_work(ray_local, tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"im{i}.jpg").write_bytes(jpeg(40, 40, seed=i))
    code = main(["evaluate", "box", "--model", "sam_tiny", "--all", "--out",
                 str(tmp_path / "rep"), "--set", f"input.urls={tmp_path / 'imgs'}"])
    err = _err(capsys)
    assert code == 2 and len(err) == 1
    assert "no ground truth found for any of the 3 chosen images" in err[0]
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("case", ["no_name", "empty", "missing", "coco_missing"])
def test_argument_and_path_errors_are_one_line(ray_local, corpora, tmp_path, capsys, case):
    (tmp_path / "empty").mkdir()
    args = {
        "no_name": ["--labels", str(corpora / "labels_a")],
        "empty": ["--labels", f"x={tmp_path / 'empty'}"],
        "missing": ["--labels", f"x={tmp_path / 'nowhere'}"],
        "coco_missing": ["--labels", f"x={corpora / 'labels_a'}", "--set",
                         "ground_truth.source=coco", "--set",
                         f"ground_truth.path={tmp_path / 'nowhere.json'}"],
    }[case]
    code = main(["evaluate", "proposals", "--all", "--out", str(tmp_path / "rep"), *args])
    err = _err(capsys)
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    expected = {"no_name": "--labels: expected NAME=PATH", "empty": "expected committed shards",
                "missing": "expected committed shards", "coco_missing": "nowhere.json"}[case]
    assert expected in err[0], err[0]


def test_the_agreement_report_states_the_empty_mask_convention():
    from pipelines.evaluate import AGREEMENT_EMPTY, EvaluationReport

    report = EvaluationReport(protocol="agreement", output="-", ground_truth="sa1b",
                              sample={})
    assert AGREEMENT_EMPTY in report.text() and "IoU 0" in AGREEMENT_EMPTY


def test_a_missing_checkpoint_is_refused_before_ray(corpora, capsys):
    import time

    start = time.perf_counter()
    code = main(["evaluate", "box", "--model", "sam_tiny=./nowhere.pth", "--all", "--out",
                 str(corpora / "rep_ckpt"), "--set", f"input.urls={corpora / 'a'}"])
    err = _err(capsys)
    assert code == 2 and len(err) == 1 and time.perf_counter() - start < 10
    assert "models[0].checkpoint: checkpoint not found at './nowhere.pth'" in err[0]
