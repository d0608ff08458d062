"""Joining Ray and sizing the actor pool from the cluster (never from the submitting host)."""

from __future__ import annotations

import logging
import os

# Object-store settings that are not secret: a submitted job gets them by default (values are
# never printed).
SETTINGS_ENV = ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
# Secrets: never put into a job's runtime_env unless asked (`samdata submit --forward-secrets`):
# Ray writes a runtime_env into its logs (runtime_env_agent.log) and shows it with the job's
# details to anyone who can read the dashboard. A cluster reads its own identity instead
# (instance profile, IRSA, a Kubernetes Secret: infra/README.md).
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


# Set (to anything) by `samdata --verbose`: Ray's own progress bars and log lines stay on
VERBOSE_ENV = "SAMDATA_VERBOSE"

# Set by Ray's job supervisor for a submitted job's driver (holds the job's runtime env).
JOB_RUNTIME_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def init_ray(address: str | None = None, num_cpus: int | None = None,
             num_gpus: int | None = None, temp_dir: str | None = None) -> None:
    """Connect to `address` (or start a local Ray, with `num_cpus`/`num_gpus` when given:
    else Ray counts the machine's; `temp_dir`: its own temp directory instead of Ray's
    machine-wide default) unless already connected.

    No credentials travel in a runtime_env: a local Ray's workers inherit this process's
    environment, and a cluster's workers use the cluster's identity. Non-secret settings
    (region, endpoint) are forwarded when joining a cluster from outside a submitted job."""
    import ray

    if ray.is_initialized():
        return
    verbose = bool(os.environ.get(VERBOSE_ENV))  # else Ray's progress and logs are off
    env = {k: os.environ[k] for k in SETTINGS_ENV if k in os.environ}
    if address is None or os.environ.get(JOB_RUNTIME_ENV_VAR):
        # A local Ray inherits the environment; inside a submitted job the job's runtime env
        # already reaches every worker, and Ray refuses a driver env that repeats its keys.
        env = {}
    kwargs: dict = {"runtime_env": {"env_vars": env}} if env else {}
    if address is None and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    if address is None and num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    if address is None and temp_dir is not None:
        kwargs["_temp_dir"] = temp_dir
    if not verbose:
        kwargs["logging_level"] = logging.ERROR
    ray.init(address=address, log_to_driver=True, **kwargs)
    if not verbose:
        quiet_ray_data()


def quiet_ray_data() -> None:
    """Ray Data's progress bars and execution logs off (`--verbose` keeps them)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "enable_operator_progress_bars"):
        ctx.enable_operator_progress_bars = False
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)


def resolve_actors(actors: int | str, gpus_per_actor: float | str) -> tuple[int, float]:
    """'auto' from the cluster's resources: one actor per GPU with 1 GPU each when the cluster
    has GPUs (autoscaling clusters: set the numbers in the config), else one CPU actor."""
    import ray

    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus_per_actor == "auto":
        gpus_per_actor = 1.0 if cluster_gpus >= 1 else 0.0
    if actors == "auto":
        actors = max(1, int(cluster_gpus // gpus_per_actor)) if gpus_per_actor else 1
    return int(actors), float(gpus_per_actor)


class NoRoom(ValueError):
    """The job asks for more CPUs or GPUs than the (fixed-size, local) Ray has: it would wait
    forever for them. The message names the fields to change."""


def check_room(address: str | None, cpus: float, gpus: float, what: str, fix: str) -> None:
    """Refuse a job whose long-lived workers (`cpus`, `gpus`, e.g. actors or training workers)
    plus one CPU for the data-reading tasks do not fit the cluster: on a local Ray (address
    None, which never grows) a NoRoom error; on a cluster only a warning, since an autoscaler
    may add nodes. what: the request in words; fix: the settings that size it down."""
    import logging

    import ray

    have = ray.cluster_resources()
    have_cpus, have_gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
    problems = []
    if cpus + 1 > have_cpus:
        problems.append(f"{what} take {cpus:g} CPU(s) and the data readers need at least 1, "
                        f"the Ray has {have_cpus:g}")
    if gpus > have_gpus:
        problems.append(f"{what} take {gpus:g} GPU(s), the Ray has {have_gpus:g}")
    if not problems:
        return
    message = f"{'; '.join(problems)}: the job would wait forever; {fix}"
    if address is None:
        raise NoRoom(message)
    logging.getLogger(__name__).warning("%s (unless the cluster scales up)", message)
