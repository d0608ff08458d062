"""The shared driver of the sharded pipelines (embed, autolabel).

read -> model actor pool -> write, with the shard as the unit of work and of resume: committed
shards are skipped, partial ones cleared and redone, and a shard is committed (its
`_stats.json` written) only once every one of its samples is written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from operators.shards.listing import list_shards
from operators.shards.prepare import read_and_prepare
from operators.shards.write import clear_shard, commit_shard, committed_shards, write_batch

from .config import JobConfig
from .ray_env import init_ray, resolve_actors


@dataclass
class ShardProgress:
    rows: int = 0
    ok: int = 0
    failed: int = 0
    bytes: int = 0
    expected: int | None = None
    error: str = ""
    skipped_members: int = 0

    def complete(self) -> bool:
        return self.expected is not None and self.rows == self.expected


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
    images_ok: int = 0
    images_failed: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return (self.images_ok + self.images_failed) / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["images_per_s"] = round(self.images_per_s, 3)
        d["seconds"] = round(self.seconds, 3)
        return d

    def text(self) -> str:
        lines = [
            f"samdata {self.job}: {self.images_ok} images ok, {self.images_failed} failed, "
            f"{self.shards_done} shards written, {self.shards_skipped} already done "
            f"(of {self.shards_total})",
            f"  {self.images_per_s:.2f} images/s over {self.seconds:.1f} s, "
            f"{self.bytes_written / 2**20:.1f} MiB written",
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
    input or the "original" image), the output table and whether rows carry the image."""

    name: str
    actor: type
    actor_kwargs: dict[str, Any]
    read_mode: str
    table: str
    include_image: bool = False


def run_sharded(cfg: JobConfig, job: Job) -> RunSummary:
    """Run `job` over the shards named by `cfg` (its input, model, compute, ray, storage
    sections and output.path)."""
    import ray

    start = time.perf_counter()
    opts = cfg.storage.options()
    root = cfg.output.path.rstrip("/")
    summary = RunSummary(job=job.name, output=root, model=cfg.model.name,
                         random_weights=cfg.model.checkpoint is None)

    # Find the shards; skip committed ones and clear partial output of the rest
    shards = list_shards(cfg.input.urls, cfg.input.shards, cfg.input.limit, opts)
    done = committed_shards(root, opts)
    todo = [s for s in shards if s.name not in done]
    summary.shards_total, summary.shards_skipped = len(shards), len(shards) - len(todo)
    for s in todo:
        clear_shard(root, s.name, opts)
    if not todo:
        summary.seconds = time.perf_counter() - start
        return summary

    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    actors, gpus = resolve_actors(cfg.compute.actors, cfg.compute.gpus_per_actor)

    # Read, decode and (for padded mode) resize on CPU tasks: one task per shard
    items = [{"shard": s.name, "url": s.url, "container": s.container} for s in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.flat_map(read_and_prepare, fn_kwargs=dict(
        model_name=cfg.model.name, input_cfg=cfg.input, storage_options=opts,
        include_image=job.include_image, mode=job.read_mode))
    # Run the model on the actor pool (GPU when the config or the cluster gives one)
    ds = ds.map_batches(
        job.actor,
        fn_constructor_kwargs=dict(
            job.actor_kwargs, compute=cfg.compute, storage_options=opts,
            num_threads=None if gpus else max(1, int(cfg.compute.cpus_per_actor)),
            # an actor given a GPU must use it; one given none stays on the CPU
            device="cuda" if gpus else "cpu", gpu_share=min(gpus, 1.0) if gpus else 1.0),
        batch_size=cfg.compute.ray_batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(
            size=actors,
            max_tasks_in_flight_per_actor=cfg.compute.max_tasks_in_flight_per_actor),
        num_gpus=gpus,
        num_cpus=cfg.compute.cpus_per_actor,
    )
    # Write Parquet files per shard on CPU tasks
    ds = ds.map_batches(write_batch, batch_format="numpy", batch_size=cfg.compute.ray_batch_size,
                        fn_kwargs=dict(root=root, storage_options=opts,
                                       include_image=job.include_image, table=job.table))

    # Commit each shard once all its samples are written
    progress: dict[str, ShardProgress] = {s.name: ShardProgress() for s in todo}
    for row in ds.iter_rows():
        p = progress[row["shard"]]
        if row["is_end"]:
            p.expected = int(row["shard_count"])
            p.error = row["shard_error"]
            p.skipped_members = int(row["skipped_members"])
        else:
            p.rows += int(row["rows"])
            p.ok += int(row["ok"])
            p.failed += int(row["failed"])
            p.bytes += int(row["bytes"])
        if p.complete():
            commit_shard(root, row["shard"], _stats(row["shard"], p, cfg, job), opts)
            summary.shards_done += 1
            summary.images_ok += p.ok
            summary.images_failed += p.failed
            summary.bytes_written += p.bytes
            if p.error:
                summary.shards_with_errors.append({"shard": row["shard"], "error": p.error})
            p.expected = -1  # committed; no second commit
    summary.seconds = time.perf_counter() - start
    incomplete = [n for n, p in progress.items() if p.expected != -1]
    if incomplete:
        raise RuntimeError(f"shards not completed (rerun to redo them): {', '.join(incomplete)}")
    return summary


def _stats(shard: str, p: ShardProgress, cfg: JobConfig, job: Job) -> dict:
    return {
        "shard": shard, "job": job.name, "images": p.rows, "ok": p.ok, "failed": p.failed,
        "bytes": p.bytes, "shard_error": p.error or None, "skipped_members": p.skipped_members,
        "model": cfg.model.name,
        "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
