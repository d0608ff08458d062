"""`samdata distill` end to end on Ray Train: a tiny teacher's corpus -> a tiny student, its
file in the official format, resume after SIGKILL, stage 2 on ground truth."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models import build_model
from models.export import head_state_dict
from pipelines.cli import main
from pipelines.config import ConfigError, DistillConfig, load_config, parse_config
from pipelines.distill import run_distill
from tests.operators.training.corpus import make_corpus, stage1_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _stage1(corpus: tuple[str, str], out: Path, **sections) -> dict:
    """A stage-1 config for the tiny pair: sam_tiny's embeddings -> mobile_sam_tiny."""
    return stage1_config(corpus[1], out, "mobile_sam_tiny", 60, 6, "tiny", **sections)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3 shards x 6 images embedded by sam_tiny (seed-0 weights), the JPEGs stored."""
    return make_corpus(tmp_path_factory.mktemp("distill"), shards=3, per_shard=6)


def test_stage1_loss_falls_agreement_rises_and_the_file_loads_strictly(ray_local, corpus,
                                                                       tmp_path, capsys):
    cfg = parse_config(_stage1(corpus, tmp_path / "runs"), DistillConfig)
    summary = run_distill(cfg)
    assert (summary.steps, summary.total_steps, summary.resumed_from_step) == (60, 60, 0)
    assert summary.final_loss < 0.6 * summary.first_loss
    first, last = summary.validation_first, summary.validation_final
    assert last["val_mse"] < 0.6 * first["val_mse"]
    assert last["val_cosine"] > first["val_cosine"]
    assert last["val_agreement_miou"] > first["val_agreement_miou"]
    assert summary.images == 240 and summary.images_per_s > 0
    assert "RANDOM TEACHER" in summary.text()

    # The file: the official format, loaded strictly; the teacher's heads bit for bit
    path = Path(summary.checkpoint)
    assert path == tmp_path / "runs" / "tiny" / "mobile_sam_tiny.pt"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert summary.sha256 == digest
    assert path.with_suffix(".pt.sha256").read_text().split()[0] == digest
    student = build_model("mobile_sam_tiny", checkpoint=path, sha256=digest)
    teacher = build_model("sam_tiny", seed=0)
    heads = head_state_dict(student)
    assert heads.keys() == head_state_dict(teacher).keys()
    for k, v in head_state_dict(teacher).items():
        assert torch.equal(heads[k], v), k
    assert not all(torch.equal(a, b) for a, b in zip(
        student.image_encoder.state_dict().values(),
        build_model("mobile_sam_tiny").image_encoder.state_dict().values(), strict=True))
    written = json.loads(path.with_suffix(".json").read_text())
    assert written["sha256"] == digest and written["history"][-1]["step"] == 60


def test_bad_pairs_and_teachers_are_refused_before_training(corpus, tmp_path):
    # (a stretching EfficientSAM student of a padding SAM teacher: tests/operators/training/
    # test_pairing.py; here the shapes differ first)
    with pytest.raises(ConfigError, match="student.name: expected a model with the teacher's "
                                          "32x8x8 embedding, got efficient_sam_vitt"):
        run_distill(parse_config(_stage1(corpus, tmp_path, student={"name": "efficient_sam_vitt"}),
                                 DistillConfig))
    with pytest.raises(ConfigError, match="teacher.name: expected 'sam_tiny'"):
        run_distill(parse_config(_stage1(corpus, tmp_path, teacher={"name": "mobile_sam_tiny"}),
                                 DistillConfig))
    other = tmp_path / "other.pt"
    torch.save(build_model("sam_tiny", seed=5).state_dict(), other)
    with pytest.raises(ConfigError, match="teacher.checkpoint: expected the weights the "
                                          "embeddings were made with \\(random weights\\)"):
        run_distill(parse_config(_stage1(corpus, tmp_path, teacher={"checkpoint": str(other)}),
                                 DistillConfig))
    with pytest.raises(ConfigError) as e:
        parse_config(_stage1(corpus, tmp_path, data={"embeddings": None},
                             student={"name": "fastsam_s"}, stage1={"batch_size": 3},
                             compute={"workers": 2}), DistillConfig)
    msg = str(e.value)
    assert "student.name: expected a model with an image encoder" in msg


def test_cli_refuses_a_bad_config_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"stage": 3, "data": {}, "output": {"path": "x"},
                               "stage1": {"lr": -1}}))
    assert main(["distill", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "stage: " in err and "stage1.lr" in err
    assert main(["submit", "distill", "--config", str(bad),
                 "--address", "http://127.0.0.1:9"]) == 2


@pytest.mark.parametrize("name", ["distill_stage1.yaml", "distill_stage2.yaml",
                                  "distill_tiny_gt.yaml", "distill_tiny_stage1.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = load_config(CONFIGS / name, [], DistillConfig)
    assert cfg.stage in (1, 2)


def _snapshot_step(run: Path) -> int:
    """The step of the run's latest registered checkpoint (0 when none yet)."""
    try:
        snap = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return 0
    results = snap.get("checkpoint_results") or []
    return max((int(r["metrics"]["step"]) for r in results), default=0)


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_reaches_the_same_step_count(ray_local, corpus, tmp_path):
    """Kill a real `samdata distill` process (and its Ray) after a checkpoint, run it again."""
    data = _stage1(corpus, tmp_path / "runs", stage1={"steps": 160},
                   output={"checkpoint_every": 20}, compute={"log_every": 10})
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(json.dumps(data))
    run = tmp_path / "runs" / "tiny"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "distill", "--config",
                             str(cfg_path)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None and _snapshot_step(run) < 40:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = _snapshot_step(run)
    assert 40 <= killed_at < 160, f"kill came too late or never: checkpoint at {killed_at}"

    summary = run_distill(parse_config(data, DistillConfig))
    print(f"SIGKILL after the checkpoint of step {killed_at}; the rerun resumed at step "
          f"{summary.resumed_from_step} and ended at {summary.steps}/{summary.total_steps}")
    assert summary.steps == summary.total_steps == 160
    assert summary.resumed_from_step >= killed_at  # continued, not started over
    history = json.loads(Path(summary.checkpoint).with_suffix(".json").read_text())["history"]
    steps = [int(h["step"]) for h in history]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 160
    assert len(steps) == len(set(steps))  # no step logged twice: nothing was redone
    assert summary.final_loss < summary.first_loss

    # Started once more with the same name: nothing left to train, the same student file
    again = run_distill(parse_config(data, DistillConfig))
    assert (again.steps, again.resumed_from_step, again.sha256) == (160, 160, summary.sha256)


@pytest.mark.slow
def test_stage2_on_ground_truth_improves_box_miou(ray_local, tmp_path):
    """sam_tiny from scratch on the sample corpus's exact masks (the demo's recipe, shortened)."""
    from operators.shards.sample import write_sample_corpus

    write_sample_corpus(str(tmp_path / "gt"), shards=8, images_per_shard=16, seed=1)
    cfg = load_config(CONFIGS / "distill_tiny_gt.yaml", [
        f"data.corpus=[{tmp_path / 'gt'}]", f"output.path={tmp_path / 'runs'}",
        "stage2.steps=400", "validation.every=400", "validation.images=16",
        "output.checkpoint_every=400"], DistillConfig)
    summary = run_distill(cfg)
    first = summary.validation_first["val_box_miou"]
    last = summary.validation_final["val_box_miou"]
    print(f"stage 2 on ground truth: box mIoU {first:.1f} -> {last:.1f} in {summary.steps} "
          f"steps ({summary.seconds:.0f} s)")
    assert last > first + 10
    model = build_model("sam_tiny", checkpoint=summary.checkpoint)
    assert model.checkpoint_sha256 == summary.sha256


@pytest.mark.slow
def test_stage2_on_teacher_masks_from_saved_embeddings(ray_local, corpus, tmp_path):
    """EdgeSAM's stage: targets from the teacher's decoder on the stored embeddings, prompts
    from the source shards' annotations, the student's encoder and decoder trained."""
    data = _stage1(corpus, tmp_path / "runs", stage=2,
                   stage2={"targets": "teacher", "batch_size": 4, "steps": 40, "lr": 1e-3},
                   validation={"every": 40, "images": 6}, output={"checkpoint_every": 40})
    summary = run_distill(parse_config(data, DistillConfig))
    assert summary.steps == 40 and summary.teacher == "sam_tiny"
    assert summary.final_loss < summary.first_loss
    assert {"val_agreement_miou", "val_box_miou", "val_mse"} <= set(summary.validation_final)
    student = build_model("mobile_sam_tiny", checkpoint=summary.checkpoint)
    teacher = build_model("sam_tiny", seed=0)
    # the prompt encoder is frozen (EdgeSAM); the mask decoder has moved from the teacher's
    assert all(torch.equal(student.prompt_encoder.state_dict()[k], v)
               for k, v in teacher.prompt_encoder.state_dict().items())
    assert not all(torch.equal(student.mask_decoder.state_dict()[k], v)
                   for k, v in teacher.mask_decoder.state_dict().items())


@pytest.mark.slow
def test_stage1_from_s3_embeddings_with_checkpoints_on_s3(ray_local, corpus, s3_bucket,
                                                         s3_endpoint, tmp_path):
    """RunConfig(storage_path=s3://...) through the S3 test server, the corpus read from S3."""
    fs, bucket = s3_bucket
    fs.put(corpus[1], f"{bucket}/emb", recursive=True)
    # an output moves with its bookkeeping folder beside it (commit markers, identity)
    fs.put(corpus[1] + ".samdata", f"{bucket}/emb.samdata", recursive=True)
    data = _stage1(corpus, "unused", data={"embeddings": f"s3://{bucket}/emb"},
                   stage1={"steps": 20}, validation={"every": 20},
                   output={"path": f"s3://{bucket}/runs", "checkpoint_every": 10},
                   storage={"endpoint_url": s3_endpoint})
    summary = run_distill(parse_config(data, DistillConfig))
    assert summary.steps == 20 and summary.checkpoint == f"s3://{bucket}/runs/tiny/" \
                                                         "mobile_sam_tiny.pt"
    assert fs.exists(f"{bucket}/runs/tiny/checkpoint_manager_snapshot.json")
    local = tmp_path / "student.pt"
    fs.get(f"{bucket}/runs/tiny/mobile_sam_tiny.pt", str(local))
    assert build_model("mobile_sam_tiny", checkpoint=local, sha256=summary.sha256)


@pytest.mark.slow
def test_two_workers_track_one_worker(ray_local, corpus, tmp_path):
    """BatchNorm over the global batch (operators/training/sync_bn.py): two CPU workers with
    half the images each reach the loss one worker reaches with the whole batch."""
    losses = {}
    for workers in (1, 2):
        cfg = parse_config(_stage1(corpus, tmp_path / f"runs{workers}",
                                   stage1={"batch_size": 8, "steps": 120},
                                   compute={"workers": workers, "cpus_per_worker": 0.5}),
                           DistillConfig)
        losses[workers] = run_distill(cfg).final_loss
    assert losses[2] == pytest.approx(losses[1], rel=0.05), losses
