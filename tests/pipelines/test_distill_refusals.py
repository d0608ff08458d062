"""`samdata distill` refuses data it cannot train on before Ray Train starts (issue 27):
source shards that are missing, a corpus whose images are not those the embeddings were made
from, and more training workers than the local Ray can ever give."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from operators.shards.sample import write_sample_corpus
from pipelines.cli import main
from tests.operators.training.corpus import make_corpus


def _config(tmp_path, emb: str, **compute) -> str:
    path = tmp_path / "distill.yaml"
    path.write_text(json.dumps({
        "stage": 1, "data": {"embeddings": emb, "val_shards": 1},
        "student": {"name": "mobile_sam_tiny"}, "stage1": {"batch_size": 2, "steps": 4},
        "compute": {"cpus_per_worker": 1.0, **compute},
        "output": {"path": str(tmp_path / "runs")}}))
    return str(path)


@pytest.fixture()
def corpus(tmp_path):
    """3 shards x 4 images embedded by sam_tiny, without the JPEGs (the sources are read)."""
    return make_corpus(tmp_path / "data", shards=3, per_shard=4, include_image=False)


def _one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("samdata ")]
    assert len(err) == 1, err
    return err[0]


def test_missing_source_shards_are_refused_at_once(corpus, tmp_path, capsys):
    shutil.rmtree(corpus[0])
    start = time.perf_counter()
    assert main(["distill", "--config", _config(tmp_path, corpus[1])]) == 2
    assert time.perf_counter() - start < 10
    line = _one_line(capsys)
    assert "expected the source shards of the embeddings, got 3 of 3 missing" in line


def test_a_corpus_of_other_images_under_the_same_names_is_refused(corpus, tmp_path, capsys):
    shutil.rmtree(corpus[0])
    write_sample_corpus(corpus[0], shards=3, images_per_shard=4, seed=5)  # same names
    assert main(["distill", "--config", _config(tmp_path, corpus[1])]) == 2
    line = _one_line(capsys)
    assert "were made from other image bytes" in line and "sa_000000/" in line


def test_more_workers_than_the_local_ray_has_are_refused(ray_local, corpus, tmp_path, capsys):
    assert main(["distill", "--config", _config(tmp_path, corpus[1], workers=2)]) == 2
    line = _one_line(capsys)
    assert "2 training worker(s)" in line and "would wait forever" in line
    assert "compute.workers" in line


def test_more_actors_than_the_local_ray_has_are_refused(ray_local, tmp_path, capsys):
    write_sample_corpus(str(tmp_path / "in"), shards=1, images_per_shard=2)
    assert main(["embed", "--set", f"input.urls={tmp_path / 'in'}", "--set",
                 f"output.path={tmp_path / 'out'}", "--set", "model.name=sam_tiny",
                 "--set", "compute.actors=2"]) == 2
    line = _one_line(capsys)
    assert "2 model actor(s)" in line and "would wait forever" in line


def test_a_run_folder_resumes_only_its_own_run(ray_local, corpus, tmp_path, capsys):
    config = _config(tmp_path, corpus[1])
    assert main(["distill", "--config", config, "--set", "stage1.steps=2"]) == 0
    capsys.readouterr()
    start = time.perf_counter()
    assert main(["distill", "--config", config, "--set", "stage1.steps=2",
                 "--set", "student.seed=1"]) == 2
    line = _one_line(capsys)
    assert "holds the output of another run" in line and "student.seed" in line
    assert "use another output.name" in line and time.perf_counter() - start < 10
