"""`samdata distill`: train a student from the embedding corpus on Ray Train.

find the shards (embeddings and/or images) -> check the teacher/student pair -> Ray Data ingest
on CPU tasks -> TorchTrainer (train_loop_per_worker) with checkpoints under
RunConfig(storage_path, name) -> the student file in its official format, its sha256 and the
training summary next to it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import posixpath
import time
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
import torch

from models import build_model
from models.checkpoint import CheckpointError, load_state_dict_strict, unwrap_state_dict
from models.export import load_heads, save_official_checkpoint
from models.registry import has_high_res
from operators.shards.identity import claim_output
from operators.shards.prepare import model_skeleton
from operators.training.config import DistillSections
from operators.training.ingest import (
    CorpusInfo,
    IngestSpec,
    TrainShard,
    attach_sources,
    check_sources,
    corpus_shards,
    embedding_info,
    embedding_shards,
    read_training_rows,
    split_shards,
)
from operators.training.loop import TrainPlan, train_loop_per_worker
from operators.training.pairing import check_pair
from operators.training.state import read_state

from .config import ConfigError, DistillConfig
from .ray_env import check_room, init_ray

log = logging.getLogger(__name__)


@dataclass
class DistillSummary:
    """What a distillation run did; printed as text and as one JSON line, and written as
    `{checkpoint stem}.json` next to the student file."""

    stage: int
    student: str
    teacher: str | None
    random_teacher: bool
    checkpoint: str = ""
    sha256: str = ""
    steps: int = 0
    total_steps: int = 0
    resumed_from_step: int = 0
    epochs: float = 0.0
    images: int = 0
    images_per_s: float = 0.0
    data_wait_share: float = 0.0
    steady_images_per_s: float = 0.0  # without the first log window (the pipeline's start)
    steady_data_wait_share: float = 0.0
    first_loss: float = float("nan")
    final_loss: float = float("nan")
    validation_first: dict[str, float] = field(default_factory=dict)
    validation_final: dict[str, float] = field(default_factory=dict)
    train_shards: int = 0
    val_shards: int = 0
    run: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("images_per_s", "data_wait_share", "steady_images_per_s",
                  "steady_data_wait_share", "seconds"):
            d[k] = round(d[k], 4)
        return d

    def text(self) -> str:
        lines = [
            f"samdata distill: stage {self.stage}, {self.student} from "
            f"{self.teacher or 'the ground truth'}: {self.steps}/{self.total_steps} steps"
            + (f" (resumed at step {self.resumed_from_step})" if self.resumed_from_step else ""),
            f"  loss {self.first_loss:.5g} -> {self.final_loss:.5g}; {self.images} images in "
            f"{self.seconds:.1f} s",
            f"  training {self.images_per_s:.2f} images/s, data wait "
            f"{100 * self.data_wait_share:.1f}% of step time (steady state "
            f"{self.steady_images_per_s:.2f} images/s, "
            f"{100 * self.steady_data_wait_share:.1f}%)",
        ]
        for k, v in self.validation_final.items():
            if k == "val_images":
                continue
            before = self.validation_first.get(k)
            lines.append(f"  {k}: " + (f"{before:.4g} -> " if before is not None else "")
                         + f"{v:.4g}")
        if self.random_teacher:
            lines.append("  ** RANDOM TEACHER WEIGHTS: the student learns a meaningless teacher **")
        lines.append(f"  student file: {self.checkpoint}")
        lines.append(f"  sha256 {self.sha256}")
        return "\n".join(lines)


def steady_state(history: list[dict], start_step: int) -> tuple[float, float]:
    """(images/s, data-wait share) of the last attempt's log windows after its first (which
    holds the start of the pipeline), time-weighted; (0, 0) with fewer than two windows."""
    windows = [h for h in history if h.get("start_step") == start_step
               and h.get("window_s", 0) > 0 and h["step"] > start_step]
    windows = windows[1:]
    seconds = sum(h["window_s"] for h in windows)
    if not seconds:
        return 0.0, 0.0
    images = sum(h["images_per_s"] * h["window_s"] for h in windows)
    wait = sum(h["data_wait_share"] * h["window_s"] for h in windows)
    return images / seconds, wait / seconds


def _absolute(path: str | None) -> str | None:
    """A local path made absolute (workers run in their own folders); URLs as they are."""
    return path if path is None or "://" in path else os.path.abspath(path)


def sections_of(cfg: DistillConfig) -> DistillSections:
    """The sections the workers need (the config without data, compute, output, ray,
    storage), local checkpoint paths made absolute."""
    sections = DistillSections(**{k: getattr(cfg, k) for k in DistillSections.model_fields})
    return sections.model_copy(update={
        "student": sections.student.model_copy(
            update={"checkpoint": _absolute(sections.student.checkpoint)}),
        "teacher": sections.teacher.model_copy(
            update={"checkpoint": _absolute(sections.teacher.checkpoint)})})


def _find_shards(cfg: DistillConfig) -> tuple[list[TrainShard], CorpusInfo | None]:
    """The shards to read (embedding shards with their sources, or corpus shards) and the
    embedding corpus's description (None without embeddings)."""
    opts = cfg.storage.options()
    d = cfg.data
    if cfg.uses_teacher:
        shards = embedding_shards(d.embeddings, opts, d.shards, d.limit)
        info = embedding_info(shards, opts)
        if cfg.stage == 2 or not info.has_image:
            shards = attach_sources(shards, d.corpus, opts)
        return shards, info
    if d.corpus:
        return corpus_shards(d.corpus, opts, d.shards, d.limit), None
    # ground truth through an embedding corpus's sources
    shards = attach_sources(embedding_shards(d.embeddings, opts, d.shards, d.limit), None, opts)
    return [TrainShard(s.name, (), s.url, s.container, s.rows) for s in shards], None


def _teacher(cfg: DistillConfig, info: CorpusInfo | None) -> tuple[str | None, dict | None]:
    """The teacher's registry name and its heads (prompt encoder and mask decoder tensors),
    checked against the corpus: same model, same weights (sha256), pair with the student."""
    if not cfg.uses_teacher:
        return None, None
    name = cfg.teacher.name or info.model
    if name != info.model:
        raise ConfigError(f"teacher.name: expected '{info.model}' (the model that wrote the "
                          f"embeddings), got '{name}'")
    try:
        check_pair(name, model_skeleton(name), cfg.student.name,
                   model_skeleton(cfg.student.name), info.shape)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if cfg.stage == 2 and has_high_res(name) and not info.has_high_res:
        raise ConfigError(
            f"data.embeddings: expected the SAM 2 teacher's high-res maps in the corpus for "
            f"stage2.targets teacher (its decoder makes the target masks from the saved "
            f"embedding and maps: embed with output.high_res: true), got a corpus of {name} "
            f"without high_res_0/high_res_1 (or use stage2.targets: ground_truth)")
    heads, digest = load_heads(name, cfg.teacher.checkpoint, cfg.teacher.sha256,
                               cfg.teacher.seed, storage_options=cfg.storage.options())
    if digest != info.checkpoint_sha256:
        made = info.checkpoint_sha256 or "random weights"
        raise ConfigError(f"teacher.checkpoint: expected the weights the embeddings were made "
                          f"with ({made}), got {digest or 'random weights (no checkpoint)'}")
    return name, heads


def run_identity(cfg: DistillConfig, teacher: str | None, info: CorpusInfo | None) -> dict:
    """What a distillation run's checkpoints depend on: the stage, the student (and the file
    it starts from), the teacher and its weights (as the corpus records them), the data and
    the training sections (never compute, logging or output settings)."""
    d = cfg.data
    return {"job": "distill", "stage": cfg.stage,
            "student": cfg.student.model_dump(mode="json"),
            "teacher": {"name": teacher, "checkpoint_sha256": info.checkpoint_sha256
                        if info is not None else None},
            "data": {"embeddings": d.embeddings, "corpus": d.corpus, "shards": d.shards,
                     "limit": d.limit, "val_shards": d.val_shards},
            "optim": cfg.optim.model_dump(mode="json")}


def _plan(cfg: DistillConfig, train: list[TrainShard], teacher: str | None) -> TrainPlan:
    optim = cfg.optim
    workers = cfg.compute.workers
    per_worker = optim.batch_size // workers
    rows = sum(s.rows for s in train) if all(s.rows >= 0 for s in train) else None
    steps_per_epoch = (rows // workers) / per_worker if rows is not None else None
    if optim.steps is None:
        if steps_per_epoch is None:
            raise ConfigError(f"stage{cfg.stage}.steps: expected a step count when training "
                              "from a raw corpus (its image count is unknown before reading "
                              "it), got none")
        if steps_per_epoch < 1:
            raise ConfigError(f"stage{cfg.stage}.batch_size: expected at most the {rows} "
                              f"training images, got {optim.batch_size}")
    total = optim.steps or max(1, math.ceil(optim.epochs * steps_per_epoch))
    warmup = round(total * optim.warmup_epochs / optim.epochs)
    student = model_skeleton(cfg.student.name)
    grid = student.embedding_shape[-1]
    return TrainPlan(
        total_steps=total, warmup_steps=min(warmup, total), epoch_rows=rows,
        batch_per_worker=per_worker, checkpoint_every=cfg.output.checkpoint_every,
        log_every=cfg.compute.log_every, val_every=cfg.validation.every,
        mask_size=cfg.stage2.mask_size or 4 * grid, teacher=teacher,
        shuffle_buffer=cfg.data.shuffle_buffer, prefetch_batches=cfg.data.prefetch_batches,
        validate=cfg.data.val_shards > 0)


def _specs(cfg: DistillConfig, plan: TrainPlan, info: CorpusInfo | None
           ) -> tuple[IngestSpec, IngestSpec]:
    stage2 = cfg.stage == 2
    common = dict(student=cfg.student.name, teacher=plan.teacher,
                  teacher_embedding=cfg.uses_teacher, mask_size=plan.mask_size,
                  prefer_source_image=info is not None and not info.has_image,
                  fmt=cfg.data.format, max_image_pixels=cfg.data.max_image_pixels)
    # Stage 1: a SAM 2 student learns the teacher's high-res maps too where the corpus holds
    # them; stage 2: a SAM 2 teacher's masks are made with them (targets and validation)
    with_maps = info is not None and info.has_high_res
    high_res = with_maps and (cfg.uses_teacher if stage2 else
                              cfg.stage1.high_res_weight > 0 and has_high_res(cfg.student.name))
    train = IngestSpec(**common, instances=cfg.stage2.instances_per_image if stage2 else 0,
                       max_mask_area=cfg.stage2.max_mask_area, high_res=high_res)
    val = IngestSpec(**common, instances=cfg.validation.max_instances,
                     ground_truth_rles=True, render_masks=False, random_instances=False,
                     high_res=high_res)
    return train, val


def _validation_rows(cfg: DistillConfig, val: list[TrainShard], spec: IngestSpec
                     ) -> list[dict]:
    """The held-out rows, with the annotations of their source shards when those can be read
    (always in stage 2; in stage 1 when `data.corpus` or the rows' `source_uri` reach them),
    else without (agreement on the point grid only)."""
    if not val:
        return []
    if not all(s.url for s in val):
        try:
            val = attach_sources(val, cfg.data.corpus, cfg.storage.options())
        except (ValueError, OSError) as e:
            log.warning("validation without annotations (their shards are not readable: %s)",
                        e)
            spec = replace(spec, instances=0, ground_truth_rles=False)
    return read_rows(val, spec, cfg, cfg.validation.images)


def pass_items(shards: list[TrainShard], rows_per_pass: int, seed: int) -> list[dict]:
    """The items of one training pass: the shards in a seeded order, repeated (each time
    reshuffled) until they hold `rows_per_pass` rows (once when their rows are unknown)."""
    import numpy as np

    rows = sum(s.rows for s in shards) if all(s.rows >= 0 for s in shards) else None
    repeat = max(1, math.ceil(rows_per_pass / rows)) if rows else 1
    items = []
    for r in range(repeat):
        order = np.random.default_rng([seed, r]).permutation(len(shards))
        items += [shards[i].item() for i in order]
    return items


def _dataset(items: list[dict], spec: IngestSpec, cfg: DistillConfig):
    """Ray Data: one item per shard -> training rows on CPU tasks."""
    import ray

    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.flat_map(read_training_rows, fn_kwargs=dict(
        spec=spec, storage_options=cfg.storage.options(), storage=cfg.storage))


def read_rows(shards: list[TrainShard], spec: IngestSpec, cfg: DistillConfig, limit: int
              ) -> list[dict]:
    """The first `limit` rows of `shards`, read here (no Ray): the held-out set."""
    rows: list[dict] = []
    for shard in shards:
        for row in read_training_rows(shard.item(), spec, cfg.storage.options(), cfg.storage):
            rows.append(row)
            if len(rows) == limit:
                return rows
    return rows


def _storage(cfg: DistillConfig) -> tuple[str, Any]:
    """RunConfig's (storage_path, storage_filesystem): a pyarrow S3 filesystem for s3:// with
    a custom endpoint or anonymous access, else the path as is (Ray resolves it)."""
    path = cfg.output.path
    if path.startswith("s3://") and (cfg.storage.endpoint_url or cfg.storage.anon):
        import pyarrow.fs

        kwargs: dict[str, Any] = {"anonymous": cfg.storage.anon}
        if cfg.storage.endpoint_url:
            scheme, _, host = cfg.storage.endpoint_url.rpartition("://")
            kwargs.update(endpoint_override=host, scheme=scheme or "https")
        fs = pyarrow.fs.S3FileSystem(**kwargs)
        return path[len("s3://"):], fs
    return _absolute(path), None


def student_file(cfg: DistillConfig) -> str:
    """Where the student file goes: output.checkpoint, else {path}/{name}/{student}.pt."""
    if cfg.output.checkpoint:
        return cfg.output.checkpoint
    return posixpath.join(cfg.output.path.rstrip("/"), cfg.output.name,
                          f"{cfg.student.name}.pt")


def _write_student(cfg: DistillConfig, state: dict) -> tuple[str, str]:
    """Build the student from the final state, write it in its official format, check that it
    loads back strictly; returns (path, sha256)."""
    model = build_model(cfg.student.name)
    model.load_state_dict(state["model"], strict=True)
    buf = io.BytesIO()
    save_official_checkpoint(model, buf)
    data = buf.getvalue()
    path = student_file(cfg)
    fs, p = fsspec.core.url_to_fs(path, **cfg.storage.options())
    fs.makedirs(posixpath.dirname(p) or ".", exist_ok=True)
    fs.pipe_file(p, data)
    digest = hashlib.sha256(data).hexdigest()
    # What `build_model(name, checkpoint=path)` does with it: weights_only, unwrap, strict
    fresh = build_model(cfg.student.name)
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    try:
        load_state_dict_strict(fresh, unwrap_state_dict(
            loaded, getattr(fresh, "checkpoint_wrappers", ())))
    except CheckpointError as e:
        raise RuntimeError(f"the student file {path} does not load back: {e}") from e
    fs.pipe_file(p + ".sha256", f"{digest}  {posixpath.basename(p)}\n".encode())
    return path, digest


def run_distill(cfg: DistillConfig) -> DistillSummary:
    """Train `cfg.student` as `cfg` says on Ray Train; return the summary (also written next
    to the student file)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    start = time.perf_counter()
    # Find the data and split off the held-out shards
    shards, info = _find_shards(cfg)
    # The source shards are there and hold the images the embeddings were made from
    check_sources(shards, cfg.storage.options(), cfg.storage, cfg.data.format)
    train, val = split_shards(shards, cfg.data.val_shards)
    # Check the pair and load the teacher's prompt encoder and mask decoder
    teacher, heads = _teacher(cfg, info)
    plan = _plan(cfg, train, teacher)
    train_spec, val_spec = _specs(cfg, plan, info)

    # The run folder resumes only the run it holds (another student, teacher or data would
    # continue from that run's checkpoint)
    claim_output(posixpath.join(cfg.output.path.rstrip("/"), cfg.output.name),
                 run_identity(cfg, teacher, info), cfg.storage.options(),
                 what="output.path/output.name",
                 way_out="use another output.name (or output.path)")

    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    use_gpu = cfg.compute.use_gpu
    if use_gpu == "auto":
        use_gpu = float(ray.cluster_resources().get("GPU", 0)) >= cfg.compute.gpus_per_worker
    c = cfg.compute
    check_room(cfg.ray.address, c.workers * c.cpus_per_worker,
               c.workers * c.gpus_per_worker if use_gpu else 0.0,
               f"{c.workers} training worker(s) (compute.workers x compute.cpus_per_worker)",
               "lower compute.workers or compute.cpus_per_worker (e.g. 0.5), or give the Ray "
               "more CPUs")
    resources = {"CPU": cfg.compute.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = cfg.compute.gpus_per_worker
    # Ingest on CPU tasks; the held-out rows are read whole by rank 0
    items = pass_items(train, cfg.data.rows_per_pass, cfg.optim.seed)
    datasets = {"train": _dataset(items, train_spec, cfg)}
    # The held-out rows are few (validation.images): read once here, shipped to rank 0
    val_rows = _validation_rows(cfg, val, val_spec)
    storage_path, storage_fs = _storage(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"sections": sections_of(cfg), "plan": plan, "teacher_heads": heads,
                           "val_rows": val_rows, "storage_options": cfg.storage.options()},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.compute.workers,
                                               use_gpu=bool(use_gpu),
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=cfg.output.name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.compute.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.output.keep)),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"the run {cfg.output.name} ended without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = read_state(d)
    path, digest = _write_student(cfg, state)

    m = result.metrics or {}
    history = state.get("history") or []
    steady = steady_state(history, int(m.get("start_step", 0)))
    vals = [h for h in history if "val_images" in h]
    summary = DistillSummary(
        stage=cfg.stage, student=cfg.student.name, teacher=teacher,
        random_teacher=teacher is not None and cfg.teacher.checkpoint is None,
        checkpoint=path, sha256=digest, steps=int(state["step"]), total_steps=plan.total_steps,
        resumed_from_step=int(m.get("start_step", 0)),
        epochs=round(float(m.get("epoch", 0.0)), 3),
        images=int(state["images"]), images_per_s=float(m.get("run_images_per_s", 0.0)),
        data_wait_share=float(m.get("run_data_wait_share", 0.0)),
        steady_images_per_s=steady[0], steady_data_wait_share=steady[1],
        first_loss=float(m.get("first_loss", float("nan"))),
        final_loss=next((h["loss"] for h in reversed(history)
                         if math.isfinite(h.get("loss", float("nan")))), float("nan")),
        validation_first={k: v for k, v in (vals[0] if vals else {}).items()
                          if k.startswith("val_")},
        validation_final={k: v for k, v in (vals[-1] if vals else {}).items()
                          if k.startswith("val_")},
        train_shards=len(train), val_shards=len(val), run=cfg.output.name,
        seconds=time.perf_counter() - start)
    fs, p = fsspec.core.url_to_fs(path, **cfg.storage.options())
    fs.pipe_file(posixpath.splitext(p)[0] + ".json",
                 json.dumps({**summary.as_dict(), "history": history}, indent=1).encode())
    return summary
