"""Where Ultralytics is installed (not a dependency: e.g. `pip install --no-deps
ultralytics==8.0.120`, the release FastSAM vendors, or a current 8.x), a checkpoint written by
its own code (tests/models/real_ultralytics.py, in a subprocess) holds exactly the globals the
fixture reproduces (tests/fake_ultralytics.py) and loads strictly, every tensor equal to the
official module's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.registry import build_model
from tests.fake_ultralytics import OFFICIAL_GLOBALS, pickle_globals
from tests.models.real_ultralytics import installed_version

ROOT = Path(__file__).resolve().parents[2]
WRITE_TIMEOUT_S = 600


def _layout(version: str) -> str | None:
    """The fixture layout of an Ultralytics version, when the fixture reproduces it."""
    return {"8.0": "8.0", "8.4": "8.4"}.get(".".join(version.split(".")[:2]))


@pytest.mark.parametrize("name", ["fastsam_s", pytest.param("fastsam_x", marks=pytest.mark.slow)])
def test_file_written_by_ultralytics_loads_strictly(tmp_path, name):
    if installed_version() is None:
        pytest.skip("ultralytics is not installed (optional: pip install --no-deps "
                    "ultralytics==8.0.120)")
    env = dict(os.environ, YOLO_CONFIG_DIR=str(tmp_path / "settings"))
    run = subprocess.run([sys.executable, "-m", "tests.models.real_ultralytics", str(tmp_path),
                          name], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=WRITE_TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-3000:]
    version = json.loads((tmp_path / f"{name}.json").read_text())["version"]
    path = tmp_path / f"{name}.pt"
    if _layout(version) is not None:
        assert pickle_globals(path) == OFFICIAL_GLOBALS[_layout(version)], version
    official = torch.load(tmp_path / f"{name}.state.pt", weights_only=True)
    state = build_model(name, checkpoint=path).state_dict()
    assert list(state) == list(official)  # 417 tensors in FastSAM-s, 657 in FastSAM-x
    assert all(torch.equal(state[k], official[k].to(state[k].dtype)) for k in official)
