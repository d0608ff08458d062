"""Everything mode on a huge image stays within a fixed memory budget: full-size masks are
made in chunks of at most runtime.batch_size.MASK_PIXEL_BUDGET pixels, so a 9000x9000 image
(81 Mpx) upscales one mask at a time instead of upscale_batch_size of them (measured: peak
RSS 0.75 GiB alone, up to 1.6 GiB inside a loaded test run, against 4.9 GiB with the chunk
sized by mask count alone)."""

from __future__ import annotations

import subprocess
import sys

from operators.runtime.batch_size import MASK_PIXEL_BUDGET, upscale_chunk

SCRIPT = """
import resource
import numpy as np, torch
from models import build_model
from operators.config import GeneratorConfig
from operators.everything.grid import MaskGenerator
torch.set_num_threads(2)
model = build_model("sam_tiny", seed=0)
# every mask passes the filters, so all 12 are upscaled to 9000x9000
g = GeneratorConfig(points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0)
image = np.zeros((9000, 9000, 3), np.uint8)
image[2000:5000, 3000:6000] = 200
masks = MaskGenerator(model, g, batch_size=1).generate([image], encode=False)[0]
print(len(masks), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def test_chunks_are_sized_by_pixels():
    assert upscale_chunk(64, (1024, 1024)) == 64
    assert upscale_chunk(64, (1500, 2250)) == MASK_PIXEL_BUDGET // (1500 * 2250)
    assert upscale_chunk(64, (9000, 9000)) == 1
    assert upscale_chunk(8, (10, 10)) == 8


def test_a_9000_pixel_image_is_labelled_within_the_budget():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    masks, peak = (int(v) for v in done.stdout.split())
    assert masks >= 1
    # the image, the model and one chunk of float32 logits with its bool copies, not 12
    assert peak < 2.5 * 2**30, f"peak RSS {peak / 2**30:.2f} GiB"
