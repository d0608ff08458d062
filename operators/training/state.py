"""The training state saved in every Ray Train checkpoint, and read back on resume (a restarted
worker group, or the same run started again) and by the driver for the student file.

A checkpoint directory holds one file, `state.pt` (`torch.save` of plain containers and
tensors, loadable with `weights_only=True`):

    model          the student's whole state dict (official key names)
    optimizer      AdamW's state dict (moments, step counts)
    scheduler      the LambdaLR's state (its step)
    step           optimizer steps done
    passes         passes over the training dataset completed (a pass is one Ray Data
                   execution: `repeat` epochs of the shards, see pipelines/distill.py)
    batch_in_pass  batches of the current pass already trained (skipped on resume)
    images         images trained so far (all workers)
    history        the logged metrics so far: a list of dicts of floats
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

STATE_FILE = "state.pt"


@dataclass
class Progress:
    """Counters that say where training is; saved with the weights."""

    step: int = 0
    passes: int = 0
    batch_in_pass: int = 0
    images: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "passes": self.passes, "batch_in_pass": self.batch_in_pass,
                "images": self.images, "history": list(self.history)}


def save_state(directory: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any, progress: Progress) -> str:
    """Write `state.pt` into `directory`; returns its path."""
    path = os.path.join(directory, STATE_FILE)
    torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                **progress.as_dict()}, path)
    return path


def read_state(directory: str) -> dict[str, Any]:
    """The saved state of a checkpoint directory (on CPU, weights_only). Raises
    FileNotFoundError naming the directory when it holds no state."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"expected {STATE_FILE} in checkpoint '{directory}', got "
                                f"{sorted(os.listdir(directory))}")
    return torch.load(path, map_location="cpu", weights_only=True)


def restore(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any) -> Progress:
    """Load a saved state into the model, optimizer and scheduler; returns the progress."""
    model.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return Progress(step=int(state["step"]), passes=int(state["passes"]),
                    batch_in_pass=int(state["batch_in_pass"]), images=int(state["images"]),
                    history=list(state["history"]))
