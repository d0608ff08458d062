"""The shared driver of the sharded pipelines (embed, autolabel, ...).

read -> model actor pool -> write, with the shard as the unit of commit, of failure and of
resume, and the piece (about input.images_per_task samples of a shard,
operators/shards/pieces.py) as the unit of parallel reading: committed shards are skipped;
an uncommitted shard keeps the complete part files of an earlier run and only its missing
samples are processed; a shard is committed (its `_stats.json`
written, last) once every one of its samples is written exactly once. A shard that cannot be
read or written (storage failing past the retries) is left uncommitted while the others
finish; the summary names it first and the command exits non-zero, and a rerun redoes it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from operators.shards.device_decode import device_decode_problem
from operators.shards.identity import claim_output
from operators.shards.lease import Lease
from operators.shards.listing import list_shards
from operators.shards.pieces import plan_pieces
from operators.shards.prepare import input_dtype, model_skeleton, read_and_prepare
from operators.shards.resumable import StorageUnavailable
from operators.shards.schema import shard_item
from operators.shards.write import (
    commit_shard,
    committed_shards,
    existing_parts,
    output_contents,
    write_batch,
)

from .config import ComputeConfig, JobConfig
from .preflight import PreflightError, preflight_job
from .progress import JobProgress
from .ray_env import check_room, init_ray, resolve_actors


@dataclass
class ShardProgress:
    rows: int = 0  # written, this run and kept from earlier ones
    ok: int = 0
    failed: int = 0
    bytes: int = 0
    resumed: int = 0  # rows kept from an earlier run
    expected: int | None = None
    error: str = ""
    skipped_members: int = 0
    unavailable: str = ""  # why the shard could not be read or written
    committed: bool = False
    parts: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> {rows, bytes}
    members: dict[str, int] = field(default_factory=dict)  # reader's counts by kind
    pieces: int = 1  # read tasks the shard was cut into (planning)
    ends: dict[int, int] = field(default_factory=dict)  # piece index -> its sample count

    def complete(self) -> bool:
        return (not self.unavailable and not self.committed and self.expected is not None
                and self.rows == self.expected)


@dataclass
class RunSummary:
    job: str
    output: str
    model: str
    random_weights: bool
    shards_total: int = 0
    shards_skipped: int = 0
    shards_done: int = 0
    shards_with_errors: list[dict] = field(default_factory=list)
    shards_unfinished: list[dict] = field(default_factory=list)  # {shard, reason}: not written
    images_ok: int = 0
    images_failed: int = 0
    images_processed: int = 0  # rows written by this run
    images_resumed: int = 0  # rows of committed shards kept from an earlier run
    bytes_written: int = 0
    masks_processed: int = 0  # annotations in the rows this run wrote (autolabel, segment)
    categories: list[str] | None = None  # a concept job's concept list (ids 1..N): its
    #   annotations are instances of these
    seconds: float = 0.0
    # driver-side seconds of the control plane: listing, resume (committed shards and kept
    # parts), planning (pieces), commits (markers); the rest of `seconds` is the data plane
    control_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images_processed / self.seconds if self.seconds else 0.0

    @property
    def complete(self) -> bool:
        """Every shard committed (the command exits 0 only then)."""
        return not self.shards_unfinished

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["images_per_s"] = round(self.images_per_s, 3)
        d["seconds"] = round(self.seconds, 3)
        d["control_seconds"] = {k: round(v, 3) for k, v in self.control_seconds.items()}
        return d

    def text(self) -> str:
        lines = []
        if self.shards_unfinished:  # first: what the user must act on (rerun)
            lines.append(f"samdata {self.job}: {len(self.shards_unfinished)} shard(s) NOT "
                         f"written; rerun the same command to finish them:")
            lines += [f"  unfinished {s['shard']}: {s['reason']}" for s in self.shards_unfinished]
        lines += [
            f"samdata {self.job}: {self.images_ok} images ok, {self.images_failed} failed, "
            f"{self.shards_done} shards written, {self.shards_skipped} already done "
            f"(of {self.shards_total})",
            f"  {self.images_processed} processed by this run ({self.images_per_s:.2f} images/s "
            f"over {self.seconds:.1f} s), {self.images_resumed} kept from an earlier run, "
            f"{self.bytes_written / 2**20:.1f} MiB written",
            *([f"  {self.masks_processed} masks in the {self.images_processed} images of this "
               f"run"] if self.job in ("autolabel", "segment") and not self.categories else []),
            *([f"  {self.masks_processed} instances of {len(self.categories)} categories "
               f"({_names(self.categories)}) in the {self.images_processed} images of this "
               f"run"] if self.categories else []),
            f"  model {self.model}" + ("  ** RANDOM WEIGHTS: outputs are meaningless **"
                                      if self.random_weights else ""),
            f"  output: {self.output}",
        ]
        for s in self.shards_with_errors:
            lines.append(f"  shard {s['shard']}: {s['error']}")
        return "\n".join(lines)



@dataclass(frozen=True)
class Job:
    """What a sharded job runs on the shared driver: the actor class and its constructor
    arguments (the validated config sections it consumes), the reader's mode ("padded" model
    input or the "original" image), the output table, whether rows carry the image and
    whether they carry the sample json's annotations (schema `annotations_json`)."""

    name: str
    actor: type
    actor_kwargs: dict[str, Any]
    read_mode: str
    table: str
    include_image: bool = False
    include_annotations: bool = False
    decodes_on_device: bool = False  # its actor takes input.decode device rows ("encoded")
    settings: dict[str, Any] = field(default_factory=dict)  # the job's settings that change
    #   its rows (the output identity: shards.identity), beside the model's
    categories: list[str] | None = None  # a concept job's concepts: the summary and the
    #   progress line count instances of them instead of masks


def output_identity(cfg: JobConfig, job: Job, checkpoint_sha256: str | None) -> dict:
    """What the rows of `job` under `cfg` depend on: the job, the model and its weights, the
    input's decoding settings and the job's own settings (never throughput knobs)."""
    m, i = cfg.model, cfg.input
    return {"job": job.name,
            "model": {"name": m.name, "checkpoint_sha256": checkpoint_sha256,
                      "seed": None if checkpoint_sha256 else m.seed, "precision": m.precision},
            "input": {"format": i.format, "max_image_pixels": i.max_image_pixels,
                      "jpeg_draft": i.jpeg_draft,
                      **({"decode": i.decode} if i.decode != "cpu" else {})},
            "settings": job.settings}


def run_sharded(cfg: JobConfig, job: Job, overwrite: bool = False) -> RunSummary:
    """Run `job` over the shards named by `cfg` (its input, model, compute, ray, storage
    sections and output.path). Before Ray starts: the preflight checks (checkpoint, input,
    output: preflight.PreflightError), the output's lease for the whole run (a second run on
    the same output: lease.OutputBusy) and its identity (another job, model or setting:
    identity.OutputMismatch, unless `overwrite` clears the folder's shards first)."""
    start = time.perf_counter()
    root = cfg.output.path.rstrip("/")
    check_decode(cfg, job)
    digest = preflight_job(cfg)
    if cfg.input.decode == "device":  # needs the cluster's GPUs: before the output is claimed
        init_ray(cfg.ray.address, cfg.ray.num_cpus)
        check_device_decode(resolve_actors(cfg.compute.actors, cfg.compute.gpus_per_actor)[1])
    with Lease(root, job.name, cfg.storage.options()):
        claim_output(root, output_identity(cfg, job, digest), cfg.storage.options(), overwrite)
        summary = _run_leased(cfg, job, root)
    summary.seconds = time.perf_counter() - start
    return summary


def _run_leased(cfg: JobConfig, job: Job, root: str) -> RunSummary:
    import ray

    opts = cfg.storage.options()
    summary = RunSummary(job=job.name, output=root, model=cfg.model.name,
                         random_weights=cfg.model.checkpoint is None,
                         categories=job.categories)

    # Find the shards; skip committed ones, keep the complete parts of the others
    clock = summary.control_seconds
    t = time.perf_counter()
    shards = list_shards(cfg.input.urls, cfg.input.shards, cfg.input.limit, opts)
    clock["listing"] = time.perf_counter() - t
    t = time.perf_counter()
    done = committed_shards(root, opts)
    todo = [s for s in shards if s.name not in done]
    summary.shards_total, summary.shards_skipped = len(shards), len(shards) - len(todo)
    progress: dict[str, ShardProgress] = {}
    items = []
    present = output_contents(root, opts) if todo else (set(), set())
    for s in todo:
        kept = existing_parts(root, s.name, opts, present)
        progress[s.name] = ShardProgress(rows=kept.rows, ok=kept.ok, failed=kept.failed,
                                         bytes=kept.bytes, resumed=kept.rows,
                                         parts=dict(kept.parts))
        items.append(shard_item(s, skip_keys=kept.keys))
    clock["resume"] = time.perf_counter() - t
    if not todo:
        return summary

    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    actors, gpus = resolve_actors(cfg.compute.actors, cfg.compute.gpus_per_actor)
    check_room(cfg.ray.address, actors * cfg.compute.cpus_per_actor, actors * gpus,
               f"{actors} model actor(s) (compute.actors x compute.cpus_per_actor)",
               "lower compute.actors or compute.cpus_per_actor (e.g. 0.5), or give the Ray "
               "more CPUs (ray.num_cpus)")

    # Cut shards into pieces of about input.images_per_task samples (a task per shard)
    t = time.perf_counter()
    items = plan(items, cfg, opts, progress)
    clock["planning"] = time.perf_counter() - t
    # Read, decode and (for padded mode) resize on CPU tasks: one task per piece
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.flat_map(read_and_prepare, fn_kwargs=dict(
        model_name=cfg.model.name, input_cfg=cfg.input, storage_options=opts,
        include_image=job.include_image, mode=job.read_mode, storage=cfg.storage,
        include_annotations=job.include_annotations))
    # Run the model on the actor pool (GPU when the config or the cluster gives one)
    ds = map_on_actors(ds, job.actor, job.actor_kwargs, cfg.compute, opts, actors, gpus)
    # Write Parquet files per shard on CPU tasks
    ds = ds.map_batches(write_batch, batch_format="numpy", batch_size=cfg.compute.ray_batch_size,
                        fn_kwargs=dict(root=root, storage_options=opts,
                                       include_image=job.include_image, table=job.table,
                                       storage=cfg.storage))

    # Commit each shard once all its samples are written, each once
    stopped = ""
    live = JobProgress(job.name, len(progress), outputs="instances" if job.categories else
                       "masks" if job.name in ("autolabel", "segment") else None)
    try:
        for row in ds.iter_rows():
            p = progress[row["shard"]]
            rows, failed, committed = p.rows, p.failed, p.committed
            masks = summary.masks_processed
            _tally(row, p, summary, cfg, job, root)
            live.update(p.rows - rows, p.failed - failed, int(p.committed and not committed),
                        outputs=summary.masks_processed - masks)
    except Exception as e:  # noqa: BLE001 - the job stopped (an actor past its restarts,
        #   the cluster gone): what was committed stays, the rest is named for the rerun
        stopped = f"the job stopped before this shard was written: {_cause(e)}"
    live.close()
    for name, p in progress.items():
        if not p.committed:
            reason = p.unavailable or stopped or (
                f"{p.rows} of {p.expected} samples written" if p.expected is not None
                else "its end was never seen (the run stopped early)")
            summary.shards_unfinished.append({"shard": name, "reason": reason})
    return summary


def _names(names: list[str], most: int = 5) -> str:
    """A concept list for one line: the first `most` names, then how many more."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _cause(e: BaseException) -> str:
    """The error a task raised, in one line (a RayTaskError wraps it in its own text)."""
    cause = e
    for _ in range(8):  # RayTaskError.cause, then the chained __cause__ of a UDF's error
        nxt = getattr(cause, "cause", None) or cause.__cause__
        if nxt is None or nxt is cause:
            break
        cause = nxt
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:300]


def _tally(row: dict, p: ShardProgress, summary: RunSummary, cfg: JobConfig, job: Job,
           root: str) -> None:
    """Add one tally row to its shard's progress; commit the shard when it is complete."""
    if row["shard_unavailable"]:
        p.unavailable = p.unavailable or str(row["shard_unavailable"])
    elif row["is_end"]:
        piece = int(row["piece"])
        if piece not in p.ends:  # a piece's end counts once
            p.ends[piece] = int(row["shard_count"])
            p.error = p.error or row["shard_error"]
            p.skipped_members += int(row["skipped_members"])
            for kind, n in json.loads(row["member_counts"] or "{}").items():
                p.members[kind] = p.members.get(kind, 0) + n
        if len(p.ends) == p.pieces:  # the shard's count: every piece has ended
            p.expected = sum(p.ends.values())
    elif str(row["part"]) not in p.parts:  # a retried write of one batch counts once
        p.rows += int(row["rows"])
        p.ok += int(row["ok"])
        p.failed += int(row["failed"])
        p.bytes += int(row["bytes"])
        p.parts[str(row["part"])] = {"rows": int(row["rows"]), "bytes": int(row["bytes"])}
        summary.images_processed += int(row["rows"])
        summary.masks_processed += int(row["masks"])
    if not p.complete():
        return
    t = time.perf_counter()
    try:
        commit_shard(root, row["shard"], _stats(row["shard"], p, cfg, job),
                     cfg.storage.options(), cfg.storage)
    except StorageUnavailable as e:
        p.unavailable = f"the commit marker could not be written: {e}"
        return
    finally:
        summary.control_seconds["commits"] = (summary.control_seconds.get("commits", 0.0)
                                              + time.perf_counter() - t)
    p.committed = True
    summary.shards_done += 1
    summary.images_ok += p.ok
    summary.images_failed += p.failed
    summary.images_resumed += p.resumed
    summary.bytes_written += p.bytes
    if p.error:
        summary.shards_with_errors.append({"shard": row["shard"], "error": p.error})


DEVICE_PROBE_S = 120.0  # seconds the device-decode probe may wait for a GPU worker


def check_decode(cfg: JobConfig, job: Job) -> None:
    """input.decode device, before any work: the job must decode on its actor and ship the
    image's bytes (not the resized input) there. Raises PreflightError naming the setting."""
    if cfg.input.decode != "device":
        return
    if not job.decodes_on_device or job.read_mode != "padded":
        raise PreflightError(f"input.decode: expected 'cpu' for samdata {job.name} (device "
                             f"decode is wired for embed), got 'device'")
    if job.include_image:
        raise PreflightError("input.decode: expected 'cpu' with output.include_image (the "
                             "stored JPEG is the CPU-resized input), got 'device'")
    if input_dtype(model_skeleton(cfg.model.name)) != np.uint8:
        raise PreflightError(f"input.decode: expected 'cpu' for {cfg.model.name} (its input "
                             f"is prepared in float), got 'device'")


def check_device_decode(gpus: float) -> None:
    """input.decode device once Ray runs: the model actors get GPUs, and a GPU worker has
    torchvision's decode_jpeg and CUDA. Raises PreflightError saying what is missing."""
    import ray

    if not gpus:
        raise PreflightError("input.decode: expected GPUs for the model actors (device decode "
                             "runs on the actor's GPU), got none (compute.gpus_per_actor 0 or "
                             "no GPU in the cluster); use input.decode: cpu")
    probe = ray.remote(num_gpus=min(gpus, 1.0), num_cpus=0)(device_decode_problem)
    try:
        problem = ray.get(probe.remote(), timeout=DEVICE_PROBE_S)
    except ray.exceptions.GetTimeoutError as e:
        raise PreflightError(f"input.decode: no GPU worker answered in {DEVICE_PROBE_S:.0f} s "
                             f"to check device decode") from e
    if problem:
        raise PreflightError(f"input.decode: expected torchvision's decode_jpeg and CUDA on "
                             f"the GPU workers, got: {problem}; use input.decode: cpu")


PLAN_CPUS = 0.25  # a planning task mostly waits for header GETs


def plan(items: list[dict], cfg: JobConfig, opts: dict, progress: dict[str, ShardProgress]
         ) -> list[dict]:
    """The shard items -> the items of their pieces (pieces.plan_pieces, one Ray task per
    shard, on the cluster rather than the driver: the header pass is I/O); records each
    shard's piece count in `progress`."""
    import ray

    task = ray.remote(num_cpus=PLAN_CPUS)(plan_pieces)
    refs = [task.remote(item, cfg.input, opts, cfg.storage) for item in items]
    out: list[dict] = []
    for item, ref in zip(items, refs, strict=True):
        try:
            pieces = ray.get(ref)
        except Exception:  # noqa: BLE001 - the planning task died: read the shard in one task
            pieces = [item]
        progress[pieces[0]["shard"]].pieces = len(pieces)
        out += pieces
    return out


def map_on_actors(ds, actor: type, actor_kwargs: dict[str, Any], compute: ComputeConfig,
                  storage_options: dict, actors: int, gpus: float):
    """`ds.map_batches` on a pool of `actors` instances of `actor` (a model actor taking its
    config sections `actor_kwargs` plus compute, storage_options, num_threads, device and
    gpu_share), `gpus` GPUs each (resolve_actors), compute.ray_batch_size rows a call."""
    import warnings

    import ray

    with warnings.catch_warnings():
        # actor restarts have no named parameter yet (Ray 2.60 warns of the keyword form)
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        return _map_batches(ds, actor, actor_kwargs, compute, storage_options, actors, gpus, ray)


def _map_batches(ds, actor, actor_kwargs, compute, storage_options, actors, gpus, ray):
    return ds.map_batches(
        actor,
        fn_constructor_kwargs=dict(
            actor_kwargs, compute=compute, storage_options=storage_options,
            num_threads=None if gpus else max(1, int(compute.cpus_per_actor)),
            # an actor given a GPU must use it; one given none stays on the CPU
            device="cuda" if gpus else "cpu", gpu_share=min(gpus, 1.0) if gpus else 1.0),
        batch_size=compute.ray_batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(
            size=actors, max_tasks_in_flight_per_actor=compute.max_tasks_in_flight_per_actor),
        num_gpus=gpus,
        num_cpus=compute.cpus_per_actor,
        max_restarts=compute.actor_restarts,
        max_task_retries=compute.actor_restarts,
    )


def _stats(shard: str, p: ShardProgress, cfg: JobConfig, job: Job) -> dict:
    return {
        "shard": shard, "job": job.name, "images": p.rows, "ok": p.ok, "failed": p.failed,
        "resumed": p.resumed,
        "bytes": p.bytes, "shard_error": p.error or None, "skipped_members": p.skipped_members,
        "members": dict(sorted(p.members.items())), "model": cfg.model.name,
        "parts": p.parts, "pieces": p.pieces,
        "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
