"""The per-worker training function of `samdata distill` (Ray Train's `train_loop_per_worker`).

Every worker builds the student (and the teacher's heads), reads its split of the training
rows with `iter_torch_batches`, and steps AdamW until `plan.total_steps`. Every
`plan.log_every` steps all workers call `ray.train.report` (a barrier) with the progress
metrics of rank 0; every `plan.checkpoint_every` steps, and at the end, rank 0 attaches a
checkpoint (`state.py`), and every `plan.val_every` steps rank 0 validates on the held-out
rows first.

The training rows arrive in passes: a pass is one execution of the training dataset (the
driver repeats the shards inside it until it holds `data.rows_per_pass` rows, so a small
corpus does not restart the pipeline every epoch); the loop starts passes until the last step.

Resume: `ray.train.get_checkpoint()` is the latest checkpoint of this run (after a worker-group
restart, or when the same run is started again): the weights, the optimizer's moments, the
schedule's step and the step counters come back exactly; the data position comes back as far
as Ray Data allows: the pass restarts and the batches it had already trained are read again
and skipped (not trained), so the run ends at the same step count without starting over. The
rows those batches hold can differ from the first attempt's (streaming order and the local
shuffle are not replayed), so the resumed pass may see some images twice and others not at
all.
"""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models import ConceptModel, build_model
from models.export import heads_model, transplant_heads

from .config import DistillSections
from .schedule import build_optimizer
from .state import Progress, read_state, restore, save_state
from .steps import EncoderStep, PromptedStep
from .sync_bn import synchronise_batch_norm
from .validate import validate

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrainPlan:
    """What the driver resolved for the workers: step counts and cadences (global steps),
    each worker's batch, the stage-2 loss resolution, the teacher's name."""

    total_steps: int
    warmup_steps: int
    epoch_rows: int | None  # training rows an epoch (None: unknown, a raw corpus)
    batch_per_worker: int
    checkpoint_every: int
    log_every: int
    val_every: int
    mask_size: int
    teacher: str | None
    shuffle_buffer: int = 0
    prefetch_batches: int = 2
    validate: bool = True


# The trained parts by their module paths; a model's `part_modules` overrides them (SAM 2:
# sam_prompt_encoder, sam_mask_decoder; SAM 3: backbone.vision_backbone.trunk)
PART_MODULES = {"image_encoder": "image_encoder", "prompt_encoder": "prompt_encoder",
                "mask_decoder": "mask_decoder"}


def _trainable(model: torch.nn.Module, parts: list[str]) -> None:
    """Only the parameters of `parts` train; the rest (other parts, and anything outside
    them such as SAM 2's no_mem_embed, a teacher head) stay frozen."""
    names = getattr(model, "part_modules", PART_MODULES)
    for p in model.parameters():
        p.requires_grad_(False)
    for part in parts:
        for p in model.get_submodule(names[part]).parameters():
            p.requires_grad_(True)


def _autocast(device: torch.device, precision: str):
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def build_student(sections: DistillSections, heads: dict[str, torch.Tensor] | None,
                  storage_options: dict | None = None) -> torch.nn.Module:
    """The student with its initial weights: its checkpoint, or its modules' own initialisers
    under `torch.manual_seed(student.seed)` (the same on every worker); stage 1 (and stage 2
    on teacher targets from random weights) takes the teacher's heads. storage_options:
    fsspec options for a checkpoint URL (the job's storage section)."""
    s = sections.student
    if s.checkpoint is None:
        torch.manual_seed(s.seed)
    model = build_model(s.name, checkpoint=s.checkpoint, sha256=s.sha256,
                        storage_options=storage_options)
    if heads is not None and (sections.stage == 1 or s.checkpoint is None):
        transplant_heads(model, heads, f"the teacher {sections.teacher.name}")
    return model


class _Timer:
    """Wall time split into waiting for data and the rest, over a window and a run."""

    def __init__(self) -> None:
        self.wait = self.busy = 0.0
        self.run_wait = self.run_busy = 0.0
        self.mark = time.perf_counter()

    def waited(self) -> None:
        now = time.perf_counter()
        self.wait += now - self.mark
        self.mark = now

    def worked(self) -> None:
        now = time.perf_counter()
        self.busy += now - self.mark
        self.mark = now

    def pause(self) -> None:
        """Forget the time since the last mark (validation, checkpoints, skipped batches)."""
        self.mark = time.perf_counter()

    def window(self) -> tuple[float, float]:
        """(seconds, data-wait share) of the window since the last call; starts a new one."""
        total = self.wait + self.busy
        share = self.wait / total if total else 0.0
        self.run_wait += self.wait
        self.run_busy += self.busy
        self.wait = self.busy = 0.0
        return total, share


def stack_rows(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Training rows -> one numpy batch (a column per field; text stays object)."""
    out = {}
    for k in rows[0]:
        values = [r[k] for r in rows]
        out[k] = (np.array(values, dtype=object) if isinstance(values[0], str)
                  else np.stack([np.asarray(v) for v in values]))
    return out


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. config: {"sections": DistillSections, "plan": TrainPlan,
    "teacher_heads": dict of the teacher's prompt-encoder and mask-decoder tensors or None,
    "val_rows": the held-out rows (validated on rank 0), "storage_options": fsspec options of
    the job's storage section for checkpoint URLs}."""
    import ray.train
    import ray.train.torch

    sections: DistillSections = config["sections"]
    plan: TrainPlan = config["plan"]
    heads = config.get("teacher_heads")
    optim = sections.optim
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(optim.seed + rank)

    # The student (and the teacher's heads for stage-2 targets and validation)
    model = build_student(sections, heads, config.get("storage_options"))
    # a SAM 3 pair is validated on the trunk map only: no teacher heads are run
    teacher = (heads_model(plan.teacher, heads)
               if heads is not None and not isinstance(model, ConceptModel) else None)
    parts = ["image_encoder"] if sections.stage == 1 else list(sections.stage2.trainable)
    _trainable(model, parts)
    model.train()
    if sections.stage == 1:
        step_module = EncoderStep(model, sections.stage1.high_res_weight)
    else:
        step_module = PromptedStep(model, teacher if sections.stage2.targets == "teacher"
                                   else None, sections.stage2, plan.mask_size)
    if world > 1:  # BatchNorm over the global batch, not each worker's few images
        synchronise_batch_norm(step_module, device)
    # Some trainable parameters take no part in a step: TinyViT's ImageNet head (kept for the
    # official state dict), the prompt encoder's box corners in a points step, ...
    step_module = ray.train.torch.prepare_model(
        step_module, parallel_strategy_kwargs={"find_unused_parameters": True})
    if teacher is not None:
        teacher.to(device)
    opt, sched = build_optimizer(model, optim, plan.total_steps, plan.warmup_steps)

    # Resume from the run's latest checkpoint, if any
    progress = Progress()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            progress = restore(read_state(d), model, opt, sched)
    start_step = progress.step
    if rank == 0:
        resumed = (f" (resumed in pass {progress.passes}, after batch {progress.batch_in_pass})"
                   if checkpoint is not None else "")
        log.info(f"[distill] stage {sections.stage}: {sections.student.name} on {device} "
                 f"x{world}, steps {start_step}/{plan.total_steps}{resumed}")

    autocast = _autocast(device, optim.precision)
    train_data = ray.train.get_dataset_shard("train")
    val_rows = (config.get("val_rows") or []) if rank == 0 else []
    timer = _Timer()
    window_losses: list[float] = []
    window_parts: dict[str, list[float]] = {}
    window_images = 0
    attempt_images, attempt_seconds = 0, 0.0

    val_batches = [stack_rows(val_rows[i:i + plan.batch_per_worker])
                   for i in range(0, len(val_rows), plan.batch_per_worker)]

    def epoch() -> float:
        return progress.images / plan.epoch_rows if plan.epoch_rows else float(progress.passes)

    def validation() -> dict[str, float]:
        if not val_batches:
            return {}
        return validate(model, teacher if sections.uses_teacher else None, val_batches, device,
                        autocast, grid=sections.validation.grid,
                        max_instances=sections.validation.max_instances)

    def report(final: bool, force_val: bool = False) -> None:
        nonlocal window_images, attempt_images, attempt_seconds
        seconds, share = timer.window()
        attempt_images += window_images
        attempt_seconds += seconds
        metrics: dict[str, Any] = {
            "step": progress.step, "total_steps": plan.total_steps, "epoch": epoch(),
            "start_step": start_step, "lr": opt.param_groups[0]["lr"],
            "loss": float(np.mean(window_losses)) if window_losses else float("nan"),
            "images_per_s": window_images / seconds if seconds else 0.0,
            "data_wait_share": share, "window_s": seconds,
            **{f"loss_{k}": float(np.mean(v)) for k, v in window_parts.items()},
        }
        window_losses.clear()
        window_parts.clear()
        window_images = 0
        if final or force_val or progress.step % plan.val_every == 0:
            metrics.update(validation())
        if rank == 0:
            progress.history.append({k: float(v) for k, v in metrics.items()})
        metrics["first_loss"] = next((h["loss"] for h in progress.history
                                      if np.isfinite(h.get("loss", np.nan))), float("nan"))
        first_val = next((h for h in progress.history if "val_images" in h), {})
        metrics.update({f"first_{k}": v for k, v in first_val.items() if k.startswith("val_")})
        run_total = timer.run_wait + timer.run_busy
        metrics["run_images_per_s"] = attempt_images / attempt_seconds if attempt_seconds else 0.0
        metrics["run_data_wait_share"] = timer.run_wait / run_total if run_total else 0.0
        metrics["images"] = progress.images
        if rank == 0:
            line = (f"[distill] step {progress.step}/{plan.total_steps} epoch {epoch():.2f} "
                    f"loss {metrics['loss']:.5g} lr {metrics['lr']:.3g} "
                    f"{metrics['images_per_s']:.1f} img/s data wait {100 * share:.0f}%")
            line += "".join(f" {k} {v:.4g}" for k, v in metrics.items()
                            if k.startswith("val_") and k != "val_images")
            log.info(line)
        save = final or (progress.step > 0 and progress.step % plan.checkpoint_every == 0)
        if save and rank == 0:
            with tempfile.TemporaryDirectory() as d:
                save_state(d, model, opt, sched, progress)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
        timer.pause()

    if progress.step >= plan.total_steps:  # finished before: report once more, no training
        report(final=True)
        return
    if progress.step == 0 and plan.validate:  # the figures before any training
        report(final=False, force_val=True)
    gen = torch.Generator(device=device)
    while progress.step < plan.total_steps:
        skip = progress.batch_in_pass
        batches = train_data.iter_torch_batches(
            batch_size=plan.batch_per_worker, device=device, drop_last=True,
            local_shuffle_buffer_size=plan.shuffle_buffer or None,
            local_shuffle_seed=(optim.seed + 7919 * progress.passes + rank)
            if plan.shuffle_buffer else None,
            prefetch_batches=plan.prefetch_batches)
        seen = 0
        timer.pause()
        for batch in batches:
            seen += 1
            if seen <= skip:  # trained before the resume: read again, not trained
                timer.pause()
                continue
            timer.waited()
            gen.manual_seed(optim.seed * 1_000_003 + progress.step * 101 + rank)
            with autocast:
                if sections.stage == 1:
                    loss, _ = step_module(batch)
                    parts_now: dict[str, torch.Tensor] = {}
                else:
                    use_boxes = bool(np.random.default_rng(
                        [optim.seed, progress.step]).random() < sections.stage2.box_share)
                    loss, parts_now = step_module(batch, use_boxes, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], optim.grad_clip)
            opt.step()
            sched.step()
            window_losses.append(float(loss.detach()))  # one sync per step: honest step timing
            for k, v in parts_now.items():
                window_parts.setdefault(k, []).append(float(v))
            progress.step += 1
            progress.batch_in_pass += 1
            progress.images += plan.batch_per_worker * world
            window_images += plan.batch_per_worker * world
            timer.worked()
            last = progress.step >= plan.total_steps
            if last or progress.step % plan.log_every == 0 \
                    or progress.step % plan.checkpoint_every == 0 \
                    or progress.step % plan.val_every == 0:
                report(final=last)
            if last:
                break
        else:
            if seen == 0:
                raise RuntimeError(
                    f"the training shards gave no batch of {plan.batch_per_worker} images to "
                    f"worker {rank} (lower stage{sections.stage}.batch_size or add shards)")
            progress.passes += 1
            progress.batch_in_pass = 0
