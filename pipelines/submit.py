"""Submitting the pipelines to a Ray cluster through the Ray Jobs API, and following them.

`samdata submit embed|autolabel --config CFG --address http://HEAD:8265` validates the config
here (a bad one never reaches the cluster), stages a job working dir (the project's packages
and the validated config as `samdata-job.yaml`, or only the config with --image-has-project),
forwards the non-secret object-store settings (region, endpoint) by name, submits, prints the
job id and with --follow streams the logs until the job ends, exiting with its status.

Credentials are not forwarded: Ray logs a job's runtime_env on the head and shows it with the
job's details, so the job uses the cluster's own identity (instance profile, IRSA, a Kubernetes
Secret). `--forward-secrets` sends the AWS key variables anyway, saying what Ray does with them.

Token authentication (on by default in Ray 2.60): the token comes from --token-file,
$RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, in that order, and is sent as a
bearer header.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from .ray_env import SECRET_ENV, SETTINGS_ENV

PACKAGES = ("models", "operators", "pipelines")  # what the job imports; the config goes apart
JOB_CONFIG = "samdata-job.yaml"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(RuntimeError):
    """A submission problem with a one-line explanation for the user."""


def find_token(token_file: str | None = None) -> str | None:
    """The Ray auth token from --token-file, $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token (first found), or None."""
    if token_file:
        try:
            return Path(token_file).read_text().strip()
        except OSError as e:
            raise SubmitError(f"cannot read the token file '{token_file}': {e}") from e
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), Path.home() / ".ray" / "auth_token"):
        if path and Path(path).is_file():
            return Path(path).read_text().strip()
    return None


def client(address: str, token_file: str | None = None):
    """A JobSubmissionClient for `address`, with the bearer token when there is one; errors
    become one-line SubmitErrors naming the cause."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    token = find_token(token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as e:
        raise SubmitError(_auth_message(address, token)) from e
    except ConnectionError as e:
        raise SubmitError(f"nothing answers at {address}: is the Ray head up, and is this its "
                          f"dashboard address (default port 8265)?") from e


def _auth_message(address: str, token: str | None) -> str:
    if token is None:
        return (f"the Ray cluster at {address} requires a token: set RAY_AUTH_TOKEN, or "
                f"--token-file, or put it in ~/.ray/auth_token (on the head: "
                f"`ray get-auth-token`)")
    return f"the Ray cluster at {address} refused the token (wrong token for this cluster?)"


def _call(fn, address: str, token_file: str | None, *args: Any, **kwargs: Any) -> Any:
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args, **kwargs)
    except AuthenticationError as e:
        raise SubmitError(_auth_message(address, find_token(token_file))) from e
    except (ConnectionError, OSError) as e:
        raise SubmitError(f"lost the connection to {address}: {e}") from e


def package_dir(name: str) -> Path:
    """Where samdata's package `name` is imported from: a checkout or an installed copy."""
    module = importlib.import_module(name)
    if not getattr(module, "__file__", None):
        raise SubmitError(f"expected samdata's package '{name}' to be importable from files, "
                          f"got a namespace package at {list(module.__path__)}")
    return Path(module.__file__).resolve().parent


def stage_working_dir(config: dict, with_project: bool) -> str:
    """A temp folder to upload as the job's working_dir: the validated config as
    samdata-job.yaml, plus the packages samdata runs from here (a checkout or an installed
    copy alike) unless the image already has them."""
    stage = tempfile.mkdtemp(prefix="samdata-job-")
    if with_project:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in PACKAGES:
            shutil.copytree(package_dir(name), Path(stage) / name, ignore=ignore)
    (Path(stage) / JOB_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    return stage


def entrypoint(job: str, config: dict, with_project: bool = True) -> str:
    """The job's command line on the cluster: `samdata {job}` (evaluate: with the config's
    protocol) on the staged config, from the uploaded packages or the image's install."""
    runner = "python -m pipelines.cli" if with_project else "samdata"
    command = f"evaluate {config['protocol']}" if job == "evaluate" else job
    return f"{runner} {command} --config {JOB_CONFIG}"


# The config fields that name data or outputs, by job (dotted paths into the config dict)
PATH_FIELDS = ("input.urls", "output.path", "output.checkpoint", "model.checkpoint",
               "data.embeddings", "data.corpus", "labels", "ground_truth.path", "prompts.path",
               "teacher.checkpoint", "student.checkpoint", "reference.checkpoint",
               "models.checkpoint")


def _values(config: dict, dotted: str) -> list[tuple[str, str]]:
    """(field, value) of every string at `dotted` in `config` (lists and dicts walked)."""
    head, _, rest = dotted.partition(".")
    node = config.get(head)
    nodes = node if isinstance(node, list) else [node]
    out = []
    for n in nodes:
        if rest and isinstance(n, dict):
            out += [(f"{head}.{f}", v) for f, v in _values(n, rest)]
        elif not rest and isinstance(n, str):
            out.append((head, n))
        elif not rest and isinstance(n, dict):  # e.g. labels: {name: path}
            out += [(f"{head}.{k}", v) for k, v in n.items() if isinstance(v, str)]
        elif not rest and isinstance(n, list):
            out += [(head, v) for v in n if isinstance(v, str)]
    return out


def local_paths_problem(config: dict, address: str) -> str | None:
    """Why the config's paths cannot work on the cluster at `address`, or None: a relative
    path never does (the job runs in an uploaded working folder), and an absolute local path
    only on a cluster of this machine (a loopback address)."""
    from urllib.parse import urlparse

    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    here = host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
    for field in PATH_FIELDS:
        for name, value in _values(config, field):
            if "://" in value or not value:
                continue
            if not value.startswith("/"):
                return (f"{name}: '{value}' is a relative local path, which the job (run in "
                        f"its own working folder on the cluster) cannot find: give an "
                        f"s3:// (or gs://) URL, or an absolute path every node can read")
            if not here:
                return (f"{name}: '{value}' is a path on this machine, which the cluster at "
                        f"{address} cannot read: put the data in object storage (s3://...) or "
                        f"on a volume the nodes mount, and name it so")
    return None


def submit(job: str, config: dict, address: str, token_file: str | None = None,
           with_project: bool = True, pip: list[str] | None = None,
           job_id: str | None = None, forward_secrets: bool = False) -> tuple[str, list[str]]:
    """Submit `samdata {job}` on the validated `config` (a dict); returns (job id, names of
    the forwarded env vars). forward_secrets: also forward the AWS key variables (SECRET_ENV),
    which Ray then writes into the head's logs and the job's details."""
    problem = local_paths_problem(config, address)
    if problem:
        raise SubmitError(problem)
    jobs = client(address, token_file)
    cfg = dict(config)
    cfg["ray"] = {**cfg.get("ray", {}), "address": None, "num_cpus": None}  # the job's cluster
    stage = stage_working_dir(cfg, with_project)
    names = SETTINGS_ENV + (SECRET_ENV if forward_secrets else ())
    env = {k: os.environ[k] for k in names if k in os.environ}
    runtime_env: dict[str, Any] = {"working_dir": stage, "env_vars": env}
    if pip:
        runtime_env["pip"] = pip
    try:
        submitted = _call(jobs.submit_job, address, token_file,
                          entrypoint=entrypoint(job, cfg, with_project),
                          runtime_env=runtime_env, submission_id=job_id,
                          metadata={"samdata_job": job})
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return submitted, sorted(env)


def status(address: str, job_id: str, token_file: str | None = None) -> str:
    """The job's status name (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    jobs = client(address, token_file)
    return str(_call(jobs.get_job_status, address, token_file, job_id).value)


def list_jobs(address: str, token_file: str | None = None) -> list[dict]:
    """The samdata jobs of the cluster, newest first: {"id", "job", "status", "started",
    "entrypoint"} (started: ISO UTC or ""); jobs not submitted by samdata are left out."""
    import datetime

    jobs = client(address, token_file)
    out = []
    for info in _call(jobs.list_jobs, address, token_file):
        meta = info.metadata or {}
        if "samdata_job" not in meta:
            continue
        start = info.start_time or 0
        out.append({
            "id": info.submission_id or info.job_id, "job": meta["samdata_job"],
            "status": str(getattr(info.status, "value", info.status)),
            "started": datetime.datetime.fromtimestamp(start / 1000, datetime.timezone.utc)
            .strftime("%Y-%m-%dT%H:%M:%SZ") if start else "",
            "start_ms": start, "entrypoint": info.entrypoint})
    return sorted(out, key=lambda j: -j.pop("start_ms"))


def logs(address: str, job_id: str, token_file: str | None = None) -> str:
    jobs = client(address, token_file)
    return _call(jobs.get_job_logs, address, token_file, job_id)


def stop(address: str, job_id: str, token_file: str | None = None) -> bool:
    jobs = client(address, token_file)
    return bool(_call(jobs.stop_job, address, token_file, job_id))


def follow(address: str, job_id: str, token_file: str | None = None, out=None,
           poll_s: float = 1.0) -> str:
    """Stream the job's logs to `out` (stdout) until it ends; return its final status name."""
    jobs = client(address, token_file)
    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except Exception as e:  # the log stream can drop (head restart); fall back to polling
        print(f"samdata: log stream ended early ({type(e).__name__}); polling status",
              file=sys.stderr)
    while (state := status(address, job_id, token_file)) not in TERMINAL:
        time.sleep(poll_s)
    return state
