"""Reading an object's bytes so that storage faults never end a shard early.

At SA-1B scale a shard is ~200 ranged GETs, and a broken body, a read timeout or a burst of
503 SlowDown that outlasts botocore's and s3fs's own retries is the normal case, not an edge
case. `ResumableReader` is the byte stream under the tar reader: on such a failure it re-opens
the object at the offset it had reached (a ranged GET), after an exponential backoff with
jitter, and the tar reader never notices. When the failure persists past
`storage.read_retries` (or the object is forbidden or gone) it raises `StorageUnavailable`,
which is not an OSError or a TarError: the shard is then left uncommitted, never committed as a
truncated tar.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Callable

from ..config import StorageConfig

log = logging.getLogger(__name__)

# Failures that retrying cannot fix: the shard is unavailable at once (a rerun redoes it)
PERMANENT = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


class StorageUnavailable(Exception):  # noqa: N818 - a state, not a programming error
    """An object could not be read (retries exhausted, forbidden, or gone): its shard must not
    be committed. The message names the object, the offset reached and the last cause."""


def backoff_s(attempt: int, storage: StorageConfig, rng: random.Random) -> float:
    """Seconds to wait before re-open number `attempt` (1, 2, ...): full jitter over an
    exponential ceiling, retry_backoff_s * 2**(attempt-1) capped at retry_backoff_max_s."""
    ceiling = min(storage.retry_backoff_max_s, storage.retry_backoff_s * 2 ** (attempt - 1))
    return rng.uniform(ceiling / 2, ceiling)


def with_retries(what: str, call: Callable[[], bytes], storage: StorageConfig,
                 sleep: Callable[[float], None] = time.sleep, verb: str = "read") -> bytes:
    """`call()` retried as the reader retries (for whole small objects: folder images, json;
    and for writes, with verb "write"). Raises StorageUnavailable "cannot {verb} {what}" when
    it keeps failing."""
    rng = random.Random()
    attempt = 0
    while True:
        try:
            return call()
        except PERMANENT as e:
            raise StorageUnavailable(f"cannot {verb} {what}: {type(e).__name__}: {e}") from e
        except Exception as e:  # network, timeout, throttling: transient by default
            attempt += 1
            if attempt > storage.read_retries:
                raise StorageUnavailable(
                    f"cannot {verb} {what} after {attempt} tries: {type(e).__name__}: {e}"
                ) from e
            log.warning("%s of %s failed (%s: %s); retry %d of %d", verb, what,
                        type(e).__name__, e, attempt, storage.read_retries)
            sleep(backoff_s(attempt, storage, rng))


class ResumableReader(io.RawIOBase):
    """A read-only byte stream of `path` on filesystem `fs` that survives transient failures
    by re-opening at its offset (see the module docstring). Tracks `pos`, the bytes delivered;
    `reopens` counts the re-opens (for tests and logs).

    start, end: the byte range to deliver (end None: the end of the object), e.g. one piece of
    a shard (pieces.py). A range is fetched as one ranged GET (a re-open: one GET of what is
    left) unless storage.block_size asks for smaller GETs; `size` is the range's length."""

    def __init__(self, fs, path: str, storage: StorageConfig | None = None,
                 sleep: Callable[[float], None] = time.sleep, start: int = 0,
                 end: int | None = None) -> None:
        super().__init__()
        self.fs, self.path = fs, path
        self.storage = storage or StorageConfig()
        self.sleep = sleep
        self.start, self.end = start, end
        self.pos = 0
        self.reopens = 0
        self._rng = random.Random()
        self._file = None
        self._want = 0
        self.size = self._retry(self._size, reopen=False)
        self._file = self._retry(self._open, reopen=False)

    def _size(self) -> int | None:
        info = self.fs.info(self.path)
        total = int(info["size"]) if info.get("size") is not None else None
        if self.end is not None:
            return self.end - self.start
        return total - self.start if total is not None and self.start else total

    def _open(self):
        if self.end is None and not self.start:
            f = self.fs.open(self.path, "rb")
        else:  # a range: one GET of what is left of it (or storage.block_size GETs)
            left = max(1, (self.size or 0) - self.pos)
            f = self.fs.open(self.path, "rb", block_size=self.storage.block_size or left,
                             cache_type="readahead")
        if self.start + self.pos:
            f.seek(self.start + self.pos)
        return f

    def _retry(self, call: Callable, reopen: bool = True):
        attempt = 0
        while True:
            try:
                return call()
            except PERMANENT as e:
                raise StorageUnavailable(
                    f"cannot read '{self.path}' at byte {self.pos}: {type(e).__name__}: {e}"
                ) from e
            except Exception as e:  # network, timeout, throttling: transient by default
                attempt += 1
                if attempt > self.storage.read_retries:
                    raise StorageUnavailable(
                        f"cannot read '{self.path}' at byte {self.pos} of {self.size} after "
                        f"{attempt} tries: {type(e).__name__}: {e}") from e
                log.warning("reading %s failed at byte %d (%s: %s); re-open %d of %d",
                            self.path, self.pos, type(e).__name__, e, attempt,
                            self.storage.read_retries)
                self._close_quietly()
                self.sleep(backoff_s(attempt, self.storage, self._rng))
                if reopen:
                    self._file = self._open_counted()

    def _open_counted(self):
        self.reopens += 1
        try:
            return self._open()
        except Exception:
            return None  # the next read fails and is retried with the next backoff

    def _close_quietly(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close
            pass
        self._file = None

    def _read_some(self) -> bytes:
        if self._file is None:
            raise ConnectionError("the object is not open (a re-open failed)")
        want = self._want if self.end is None else min(self._want, self.size - self.pos)
        data = self._file.read(want) if want > 0 else b""
        if not data and self.size is not None and self.pos < self.size:
            raise ConnectionError(f"the stream ended at byte {self.pos} of {self.size}")
        return data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._want = len(buffer)
        data = self._retry(self._read_some)
        n = len(data)
        buffer[:n] = data
        self.pos += n
        return n

    def close(self) -> None:
        self._close_quietly()
        super().close()
