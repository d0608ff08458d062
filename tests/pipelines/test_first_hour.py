"""A new user's first hour (issue 26): a rerun that would mix another model's rows into an
output is refused at once and `--overwrite` replaces them; every preflight problem (the
checkpoint, the input, the credentials, the endpoint, the output) is one line and exit 2 within
seconds, before Ray starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from operators.shards.sample import write_sample_corpus
from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _err(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("samdata ")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("first") / "corpus"
    write_sample_corpus(str(path), shards=2, images_per_shard=2)
    return str(path)


def _job(command: str, corpus: str, out: Path, *sets: str, overwrite: bool = False) -> int:
    args = [command, "--set", f"input.urls={corpus}", "--set", f"output.path={out}",
            "--set", "model.name=sam_tiny", *[a for s in sets for a in ("--set", s)]]
    return main(args + (["--overwrite"] if overwrite else []))


@pytest.mark.parametrize("command, change, field", [
    ("embed", "model.name=sam_demo", "model.name"),
    ("autolabel", "generator.pred_iou_thresh=0.5", "settings.generator.pred_iou_thresh"),
    ("segment", "prompts.use=point", "settings.prompts.use"),
])
def test_a_rerun_with_other_settings_is_refused_then_overwritten(ray_local, corpus, tmp_path,
                                                                 capsys, command, change, field):
    out = tmp_path / "out"
    base = ("generator.points_per_side=2",) if command == "autolabel" else ()
    assert _job(command, corpus, out, *base) == 0
    assert _job(command, corpus, out, *base) == 0  # the same identity resumes (nothing to do)
    capsys.readouterr()
    start = time.perf_counter()
    assert _job(command, corpus, out, *base, change) == 2
    assert time.perf_counter() - start < 10
    err = _err(capsys)
    assert len(err) == 1 and "holds the output of another run" in err[0] and field in err[0]
    assert "--overwrite" in err[0]
    assert _job(command, corpus, out, *base, change, overwrite=True) == 0
    table = pq.read_table(out)
    assert table.num_rows == 4 and len(set(table.column("key").to_pylist())) == 4
    if command == "embed":
        assert set(table.column("model").to_pylist()) == {"sam_demo"}


def _checkpoints(tmp_path: Path) -> dict[str, str]:
    class Hostile:
        def __reduce__(self):
            return (os.system, ("echo never",))

    torch.save({"model": Hostile()}, tmp_path / "hostile.pt")
    from models import build_model

    torch.save(build_model("mobile_sam_tiny", seed=0).state_dict(), tmp_path / "other.pt")
    return {"hostile": str(tmp_path / "hostile.pt"), "other": str(tmp_path / "other.pt")}


@pytest.mark.parametrize("case", ["missing_checkpoint", "hostile_checkpoint",
                                  "other_model_checkpoint", "missing_input", "empty_input",
                                  "output_not_a_folder", "bad_set_tag", "bad_set_path"])
def test_preflight_problems_are_one_line_within_seconds(corpus, tmp_path, capsys, case):
    files = _checkpoints(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    sets = {
        "missing_checkpoint": ["model.checkpoint=./sam_vit_b_01ec64.pth"],
        "hostile_checkpoint": [f"model.checkpoint={files['hostile']}"],
        "other_model_checkpoint": [f"model.checkpoint={files['other']}"],
        "missing_input": [f"input.urls={tmp_path / 'nowhere'}"],
        "empty_input": [f"input.urls={tmp_path / 'empty'}/*.tar"],
        "output_not_a_folder": [f"output.path={tmp_path / 'file.txt' / 'out'}"],
        "bad_set_tag": ["model.seed=!!python/object/apply:os.system ['echo never']"],
        "bad_set_path": ["model.name.extra=1"],
    }[case]
    expected = {
        "missing_checkpoint": "model.checkpoint: checkpoint not found at "
                              "'./sam_vit_b_01ec64.pth'",
        "hostile_checkpoint": "unsupported GLOBAL",
        "other_model_checkpoint": "does not fit sam_tiny",
        "missing_input": "input.urls: no shard found at",
        "empty_input": "input.urls: expected at least one shard",
        "output_not_a_folder": "output.path: cannot use",
        "bad_set_tag": "--set model.seed: expected a YAML value",
        "bad_set_path": "'model.name' is a value, not a section",
    }[case]
    start = time.perf_counter()
    code = _job("embed", corpus, tmp_path / "out", *sets)
    took = time.perf_counter() - start
    err = _err(capsys)
    assert code == 2 and took < 10 and len(err) == 1, (code, took, err)
    assert expected in err[0], err[0]
    assert "weights_only=False" not in err[0] and "Traceback" not in err[0]


def _s3_env(**extra: str) -> dict:
    """No credentials anywhere botocore looks (files, env) and no instance metadata lookup."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true", **extra)
    return env


@pytest.mark.parametrize("case", ["no_credentials", "dead_endpoint"])
def test_s3_problems_are_one_line_within_seconds(s3_endpoint, tmp_path, case):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    endpoint = s3_endpoint if case == "no_credentials" else dead
    env = _s3_env() if case == "no_credentials" else _s3_env(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "embed", "--set", "input.urls=s3://b/corpus/",
         "--set", f"output.path={tmp_path / 'out'}", "--set", f"storage.endpoint_url={endpoint}",
         "--set", "model.name=sam_tiny"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    took = time.perf_counter() - start
    err = [ln for ln in done.stderr.splitlines() if ln.startswith("samdata ")]
    assert done.returncode == 2 and len(err) == 1 and took < 15, (done.stderr[-2000:], took)
    assert {"no_credentials": "no S3 credentials found",
            "dead_endpoint": "cannot reach the object store"}[case] in err[0]
    assert "Traceback" not in done.stderr


def test_debug_shows_the_traceback(corpus, tmp_path, capsys):
    with pytest.raises(ValueError, match="checkpoint not found"):
        main(["embed", "--debug", "--set", f"input.urls={corpus}", "--set",
              f"output.path={tmp_path}", "--set", "model.name=sam_tiny", "--set",
              "model.checkpoint=./nothing.pth"])


def _embed_command(corpus: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "embed", "--set", f"input.urls={corpus}",
            "--set", f"output.path={out}", "--set", "model.name=sam_tiny",
            "--set", "ray.num_cpus=2"]


def test_a_terminal_shows_a_live_progress_line(corpus, tmp_path):
    import pty

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    pid, fd = pty.fork()
    if pid == 0:  # the child: samdata in a pseudo-terminal
        os.chdir(ROOT)
        os.execve(sys.executable, _embed_command(corpus, tmp_path / "out"), env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    screen = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, screen[-2000:]
    live = [ln for ln in screen.replace("\r", "\n").splitlines() if "ETA" in ln]
    assert live and "images/s" in live[-1] and "(2/2 shards)" in live[-1], screen[-2000:]
    assert "\x1b[2K" in screen  # redrawn in place, not one line per update


def test_a_piped_run_prints_a_few_lines(tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(str(corpus), shards=4, images_per_shard=8)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    with open(tmp_path / "log.txt", "w") as log:
        done = subprocess.run(_embed_command(str(corpus), tmp_path / "out"), stdout=log,
                              stderr=subprocess.STDOUT, env={**env,
                                                             "SAMDATA_PROGRESS_INTERVAL_S": "2"},
                              cwd=ROOT, timeout=300)
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert done.returncode == 0 and len(lines) < 40, "\n".join(lines)
    assert not any("Total Progress" in ln or "Traceback" in ln for ln in lines)
    assert any(ln.startswith("samdata embed: 32 images ok") for ln in lines)


@pytest.mark.parametrize("address, path, expected", [
    ("http://ray-head.invalid:8265", "./corpus", "is a relative local path"),
    ("http://ray-head.invalid:8265", "/data/corpus", "cannot read"),
    ("http://127.0.0.1:8265", "corpus", "is a relative local path"),
])
def test_submit_refuses_paths_the_cluster_cannot_read(tmp_path, capsys, address, path, expected):
    start = time.perf_counter()
    code = main(["submit", "embed", "--address", address, "--set", f"input.urls={path}",
                 "--set", "output.path=s3://bucket/emb", "--set", "model.name=sam_tiny"])
    err = _err(capsys)
    assert code == 2 and len(err) == 1 and expected in err[0] and "input.urls" in err[0]
    assert time.perf_counter() - start < 5  # refused before any connection


def test_submit_keeps_urls_and_local_absolute_paths_for_a_local_cluster():
    from pipelines.submit import local_paths_problem

    cfg = {"input": {"urls": ["s3://b/corpus/"]}, "output": {"path": "/tmp/out"},
           "models": [{"checkpoint": "s3://b/m.pt"}], "labels": {"a": "s3://b/labels"}}
    assert local_paths_problem(cfg, "http://127.0.0.1:8265") is None
    assert "output.path" in local_paths_problem(cfg, "http://ray-head:8265")
    cfg["labels"] = {"a": "labels"}
    assert "labels.a" in local_paths_problem(cfg, "http://127.0.0.1:8265")


def test_the_autolabel_summary_counts_masks(ray_local, corpus, tmp_path, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "labels"
    assert _job("autolabel", corpus, out, "generator.points_per_side=4",
                "generator.pred_iou_thresh=0", "generator.stability_score_thresh=0") == 0
    masks = sum(len(a) for a in pq.read_table(out).column("annotations").to_pylist())
    assert masks > 0 and f"{masks} masks in the 4 images of this run" in capsys.readouterr().out
