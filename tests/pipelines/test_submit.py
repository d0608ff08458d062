"""Job submission to a real `ray start` head on loopback (token auth on), S3 on the test server."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

from operators.shards.sample import write_sample_corpus
from pipelines.cli import main
from pipelines.submit import follow, logs, status, submit
from tests.ray_head import RayCluster, _ports, _session_pids, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def head(tmp_path_factory, s3_endpoint):
    cluster = RayCluster(tmp_path_factory.mktemp("ray-head"), secrets.token_hex(16))
    yield cluster
    cluster.stop()


@pytest.fixture()
def token_file(head, tmp_path):
    path = tmp_path / "token"
    path.write_text(head.token + "\n")
    return str(path)


def _config(tmp_path, bucket: str, endpoint: str) -> str:
    cfg = {"input": {"urls": [f"s3://{bucket}/corpus/"]},
           "output": {"path": f"s3://{bucket}/emb"}, "model": {"name": "sam_tiny"},
           "storage": {"endpoint_url": endpoint}, "compute": {"cpus_per_actor": 0.5}}
    path = tmp_path / "embed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_submit_embed_follow_to_success(head, token_file, s3_bucket, s3_endpoint, tmp_path,
                                        capsys):
    fs, bucket = s3_bucket
    write_sample_corpus(f"s3://{bucket}/corpus", shards=2, images_per_shard=3, seed=9,
                        storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}})
    rc = main(["submit", "embed", "--config", _config(tmp_path, bucket, s3_endpoint),
               "--address", head.address, "--token-file", token_file, "--follow"])
    out, err = capsys.readouterr()
    assert rc == 0, (out + err)[-4000:]
    job_id = out.splitlines()[0]
    assert "SUCCEEDED" in err and "AWS_DEFAULT_REGION" in err
    assert "AWS_SECRET_ACCESS_KEY" not in err  # secrets stay home unless asked
    assert "testing" not in err  # names of forwarded env vars, never their values
    assert "6 ok" in out or "images_ok" in out  # the run summary, streamed from the job
    table = pads.dataset(f"{bucket}/emb", filesystem=fs, format="parquet").to_table()
    assert table.num_rows == 6 and set(table.column("status").to_pylist()) == {"ok"}
    assert main(["jobs", "status", job_id, "--address", head.address,
                 "--token-file", token_file]) == 0
    assert capsys.readouterr().out.strip() == "SUCCEEDED"
    assert main(["jobs", "logs", job_id, "--address", head.address,
                 "--token-file", token_file]) == 0
    assert "samdata embed" in capsys.readouterr().out
    assert main(["jobs", "list", "--address", head.address, "--token-file", token_file]) == 0
    listed = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert [job_id, "embed", "SUCCEEDED"] in [ln[:3] for ln in listed]


def test_submit_refuses_bad_token_missing_token_and_dead_address(head, tmp_path, monkeypatch,
                                                                  capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"input": {"urls": ["s3://b/x/"]}, "output": {"path": "s3://b/o"}}))
    bad = tmp_path / "bad"
    bad.write_text("not-the-token")
    args = ["submit", "embed", "--config", str(cfg)]
    assert main([*args, "--address", head.address, "--token-file", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "refused the token" in err
    # no token anywhere: the message says how to provide one
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert main([*args, "--address", head.address]) == 1
    err = capsys.readouterr().err.strip()
    assert "requires a token" in err and "RAY_AUTH_TOKEN" in err
    dead = f"http://127.0.0.1:{free_port()}"
    assert main([*args, "--address", dead]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nothing answers" in err


@pytest.mark.slow  # two nodes, one killed mid-job: about 2 minutes on 2 cores
def test_job_survives_losing_a_worker_node(s3_bucket, s3_endpoint, tmp_path, capsys):
    """Head (2 CPUs: after the loss, one actor and one read task must still fit) + a worker
    node (2 CPUs); the worker node is killed (every process of it, SIGKILL) once the job has
    committed a shard. The job still succeeds and the output holds
    every image exactly once."""
    fs, bucket = s3_bucket
    write_sample_corpus(f"s3://{bucket}/corpus", shards=6, images_per_shard=4, seed=12,
                        storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}})
    cluster = RayCluster(tmp_path / "cluster", secrets.token_hex(16), num_cpus=2)
    try:
        node = cluster.add_node(num_cpus=2)
        token = tmp_path / "token"
        token.write_text(cluster.token)
        cfg = {"input": {"urls": [f"s3://{bucket}/corpus/"]},
               "output": {"path": f"s3://{bucket}/emb"},
               "model": {"name": "efficientvit_sam_l0", "batch_size": 1},
               "storage": {"endpoint_url": s3_endpoint},
               "compute": {"cpus_per_actor": 0.5, "ray_batch_size": 1}}
        job_id, _ = submit("embed", cfg, cluster.address, str(token))
        deadline = time.time() + 240

        def commits() -> int:
            fs.invalidate_cache()  # s3fs caches listings
            return len(fs.glob(f"{bucket}/emb.samdata/commits/*.json"))

        while not commits():
            assert time.time() < deadline, logs(cluster.address, job_id, str(token))[-3000:]
            assert status(cluster.address, job_id, str(token)) in ("PENDING", "RUNNING")
            time.sleep(0.5)
        committed_before = commits()
        node.kill()
        state = follow(cluster.address, job_id, str(token), out=open(os.devnull, "w"))
        assert state == "SUCCEEDED", logs(cluster.address, job_id, str(token))[-4000:]
    finally:
        cluster.stop()
    assert committed_before < 6  # the node died mid-job
    table = pads.dataset(f"{bucket}/emb", filesystem=fs, format="parquet").to_table()
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 24
    assert commits() == 6


@pytest.mark.slow  # a real `ray start` head from infra/local-cluster.sh: about 40 s
def test_the_local_cluster_script_runs_a_submitted_job(tmp_path, monkeypatch, capsys):
    """The user's steps from infra/README.md: `infra/local-cluster.sh start` from a shell whose
    PATH does not hold the venv, then `samdata submit embed ... --follow`: the job's `python`
    is the venv's (it has torch), and the job succeeds."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    home = tmp_path / "home"
    home.mkdir()
    dashboard = free_port()
    env = {**os.environ, "PATH": path, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0",
           "VENV": str(Path(sys.executable).parent.parent), "NUM_CPUS": "2",
           "RAY_TMP": tempfile.mkdtemp(prefix="rl-", dir="/tmp"), "PORT": str(free_port()),
           "DASHBOARD_PORT": str(dashboard), "CLIENT_PORT": str(free_port()),
           "RAY_START_ARGS": " ".join(_ports())}
    env.pop("RAY_ADDRESS", None)
    script = subprocess.Popen(["bash", str(ROOT / "infra" / "local-cluster.sh"), "start"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out = script.communicate(timeout=180)[0].decode()
        assert script.returncode == 0, out[-3000:]
        corpus, emb = tmp_path / "corpus", tmp_path / "emb"
        write_sample_corpus(str(corpus), shards=1, images_per_shard=2, seed=2)
        cfg = tmp_path / "embed.yaml"
        cfg.write_text(yaml.safe_dump({
            "input": {"urls": [str(corpus)]}, "output": {"path": str(emb)},
            "model": {"name": "sam_tiny"}, "compute": {"cpus_per_actor": 0.5}}))
        monkeypatch.setenv("HOME", str(home))  # no token: this head has auth disabled
        monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
        rc = main(["submit", "embed", "--config", str(cfg), "--address",
                   f"http://127.0.0.1:{dashboard}", "--follow"])
        out, err = capsys.readouterr()
        assert rc == 0, (out + err)[-4000:]
        assert "No module named" not in out + err
        assert pads.dataset(str(emb), format="parquet").to_table().num_rows == 2
    finally:
        for pid in _session_pids(script.pid):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        subprocess.run(["rm", "-rf", env["RAY_TMP"]], check=False)


def test_submit_stages_the_packages_of_an_installed_copy(tmp_path):
    """Installed without a checkout (no configs/, no pyproject.toml beside the packages),
    `samdata submit` still stages the packages it runs from and the config."""
    import shutil

    site = tmp_path / "site"
    for name in ("models", "operators", "pipelines"):
        shutil.copytree(ROOT / name, site / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import os, sys; from pipelines.submit import stage_working_dir; "
            "d = stage_working_dir({'a': 1}, True); print(sorted(os.listdir(d))); "
            "import pipelines; print(pipelines.__file__)")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(site)}, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    listed, origin = run.stdout.strip().splitlines()
    assert listed == "['models', 'operators', 'pipelines', 'samdata-job.yaml']"
    assert origin.startswith(str(site))


def _found(sentinel: str, *texts: str, tree: Path | None = None) -> list[str]:
    """Where `sentinel` appears: the texts given (by index) and the files under `tree`."""
    where = [f"text {i}" for i, t in enumerate(texts) if sentinel in t]
    for path in (tree.rglob("*") if tree else ()):
        try:
            if path.is_file() and sentinel.encode() in path.read_bytes():
                where.append(str(path))
        except OSError:
            continue
    return where


def test_a_secret_never_reaches_the_cluster_unless_forwarded(head, token_file, s3_bucket,
                                                             s3_endpoint, tmp_path, capsys,
                                                             monkeypatch):
    """Submit with a sentinel AWS_SECRET_ACCESS_KEY: it appears nowhere in the head's log tree,
    the job's details from the Jobs API, the job's logs or the outputs. With
    --forward-secrets it does reach the head's logs (so the search above can find it)."""
    from ray.job_submission import JobSubmissionClient

    fs, bucket = s3_bucket
    write_sample_corpus(f"s3://{bucket}/corpus", shards=1, images_per_shard=2, seed=4,
                        storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}})
    sentinel = "sentinel-" + secrets.token_hex(12)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", sentinel)  # moto does not check signatures
    config = _config(tmp_path, bucket, s3_endpoint)
    rc = main(["submit", "embed", "--config", config, "--address", head.address,
               "--token-file", token_file, "--follow"])
    out, err = capsys.readouterr()
    assert rc == 0, (out + err)[-4000:]
    job_id = out.splitlines()[0]
    jobs = JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {head.token}"})
    info = repr(jobs.get_job_info(job_id))
    objects = "".join(fs.cat_file(p).decode("latin-1") for p in fs.find(f"{bucket}/emb"))
    assert objects and "runtime_env" in info  # the places searched hold something
    assert _found(sentinel, out + err, info, jobs.get_job_logs(job_id), objects,
                  tree=Path(head.temp_dir)) == []
    # Asked for, the secret does travel, and Ray writes it down: the search would see it
    rc = main(["submit", "embed", "--config", config, "--address", head.address,
               "--token-file", token_file, "--forward-secrets", "--follow"])
    out, err = capsys.readouterr()
    assert rc == 0 and "--forward-secrets" in err and "dashboard" in err
    assert _found(sentinel, tree=Path(head.temp_dir)) != []


@pytest.mark.parametrize("job, config, command", [
    ("embed", {}, ["embed"]),
    ("segment", {}, ["segment"]),
    ("evaluate", {"protocol": "agreement"}, ["evaluate", "agreement"]),
    ("distill", {"stage": 1}, ["distill"]),
])
def test_the_cluster_runs_the_command_of_each_job(job, config, command):
    """The entrypoint of every submittable job is a command line samdata's parser takes, with
    the staged config (evaluate: the config's protocol as its positional argument)."""
    from pipelines.cli import build_parser
    from pipelines.submit import JOB_CONFIG, entrypoint

    line = entrypoint(job, config).split()
    assert line[:3] == ["python", "-m", "pipelines.cli"]
    assert entrypoint(job, config, with_project=False).split()[0] == "samdata"
    assert line[3:] == [*command, "--config", JOB_CONFIG]
    args = build_parser().parse_args(line[3:])
    assert args.config == JOB_CONFIG and args.command == job
    if job == "evaluate":
        assert args.protocol == config["protocol"]


def test_submit_refuses_a_bad_evaluate_config_before_contacting_a_cluster(tmp_path, capsys):
    bad = tmp_path / "eval.yaml"
    bad.write_text(yaml.safe_dump({"protocol": "proposals", "output": {"path": "./r"}}))
    code = main(["submit", "evaluate", "--config", str(bad), "--address",
                 f"http://127.0.0.1:{free_port()}"])
    assert code == 2
    assert "labels: expected at least one label dataset" in capsys.readouterr().err
