"""`samdata demo` end to end, as `make demo` runs it: the loop finishes, its files are there,
and its numbers say the shipped model works (far above random weights) and the student
learned its teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipelines.cli import main


@pytest.mark.slow  # the whole loop: about 3 minutes on 2 cores
def test_demo_runs_the_whole_loop(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--cpus", "2"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    n = summary["numbers"]
    assert summary["weights"].endswith("models/weights/sam_demo.pt")
    for step in ("1/5 sample corpus", "2/5 samdata autolabel", "3/5 contact sheet",
                 "4/5 samdata evaluate", "5/5 samdata embed"):
        assert step in printed
    # Masks, drawn: the contact sheet is not the bare images
    assert n["autolabel_images"] == 24 and n["autolabel_masks"] >= 24
    sheet = np.asarray(Image.open(summary["files"]["contact sheet"]))
    assert sheet.ndim == 3 and sheet.shape[0] > 300
    # The shipped weights against the exact masks, beside random weights (measured: box mIoU
    # 85.2 vs 22.0, AR@100 0.709 vs 0.0)
    assert n["box_miou"] >= 70 and n["box_miou_random"] <= 40
    assert n["ar100"] >= 0.5 and n["ar100_random"] <= 0.1
    # The student learned its teacher (measured 75.0)
    assert n["agreement_miou"] >= 55
    for name in ("proposals", "box", "agreement"):
        assert (out / name / "results.json").is_file()
