"""Progress a person can read: one live line per job in a terminal, a line every
`PIPE_INTERVAL_S` seconds when the output is a file or a pipe, each with what is done, the
rate, the ETA and the failures so far.

    samdata embed: 1,536 images (12/40 shards), 25.3 images/s, ETA 0:03:10, 2 failed
    samdata autolabel: 96 images (2/40 shards), 1.5 images/s, 4,211 instances, ETA 0:41:20

The ETA comes from the shards still to do at the rate shards were finished so far (a shard's
image count is known only once it is read), so it settles after the first shards commit.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

PIPE_INTERVAL_S = float(os.environ.get("SAMDATA_PROGRESS_INTERVAL_S", "10"))
TTY_INTERVAL_S = 0.5  # redraws of the live line at most this often


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class JobProgress:
    """The progress of one sharded job: call `update` as tallies arrive, `close` at the end.
    stream: where it goes (stderr, so stdout keeps the summary and its JSON line); outputs:
    what the job makes in its images ("masks", "instances"), counted on the line, or None."""

    def __init__(self, job: str, shards_total: int, stream: TextIO | None = None,
                 unit: str = "images", outputs: str | None = None) -> None:
        self.job, self.shards_total, self.unit = job, shards_total, unit
        self.outputs, self.made = outputs, 0
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self._last = time.perf_counter()
        self.images = self.failed = self.shards = 0
        self._drawn = False

    def line(self) -> str:
        """The progress line as it reads now."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.images / elapsed
        if self.shards and self.shards < self.shards_total:
            eta = _clock((self.shards_total - self.shards) * elapsed / self.shards)
        elif self.shards >= self.shards_total:
            eta = "0:00:00"
        else:
            eta = "--:--:--"  # no shard finished yet
        made = f", {self.made:,} {self.outputs}" if self.outputs else ""
        text = (f"samdata {self.job}: {self.images:,} {self.unit} ({self.shards}/"
                f"{self.shards_total} shards), {rate:.1f} {self.unit}/s{made}, ETA {eta}")
        return text + (f", {self.failed:,} failed" if self.failed else "")

    def update(self, images: int = 0, failed: int = 0, shards: int = 0, outputs: int = 0
               ) -> None:
        """Add what was just done; redraw when it is time to."""
        self.images += images
        self.made += outputs
        self.failed += failed
        self.shards += shards
        now = time.perf_counter()
        if now - self._last >= (TTY_INTERVAL_S if self.tty else PIPE_INTERVAL_S):
            self._draw()
            self._last = now

    def _draw(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """The last line (in a terminal, the live line ends with a newline)."""
        if self._drawn or self.tty:
            self._draw()
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
