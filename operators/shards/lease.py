"""One run at a time on one output: a lease file that works on local disks and object stores.

`{root}.samdata/lease.json` (shards/layout.py) = {"owner", "host", "pid", "job", "started_at",
"expires_at"}. A run takes
the lease before any work and renews it from a background thread every `ttl_s / 3` seconds;
the lease ends when the run returns. A second run on the same output finds a live lease and
is refused at once (`OutputBusy`, naming the holder), so two runs never both do the work and
write parts of the same names. A lease whose holder died is taken over: at once when the
holder ran on this host and its process is gone (a killed driver on a laptop), else once it
has expired (a driver lost with its node).

Object stores have no rename or exclusive create that every store offers, so taking the lease
is write-then-confirm: write ours, wait `confirm_s`, read it back; if another run's lease is
there, that run won and this one is refused. Two runs starting within the same instant still
end with at most one holder, since each reads after both wrote.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

import fsspec

from .layout import meta_root

LEASE_FILE = "lease.json"  # in the output's .samdata folder
DEFAULT_TTL_S = 90.0


class OutputBusy(Exception):  # noqa: N818 - a state, not a programming error
    """Another live run holds the output's lease; the message names it."""


def _alive_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user: alive
    return True


class Lease:
    """The lease on output `root` (see the module docstring). Use as a context manager:
    entering takes it (or raises OutputBusy), leaving removes it."""

    def __init__(self, root: str, job: str, storage_options: dict | None = None,
                 ttl_s: float = DEFAULT_TTL_S, confirm_s: float = 0.5) -> None:
        self.fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.path = f"{meta_root(base)}/{LEASE_FILE}"
        self.root, self.job, self.ttl_s, self.confirm_s = root, job, ttl_s, confirm_s
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        self.fs.invalidate_cache(self.path.rsplit("/", 1)[0])
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a lease cut by a crash mid-write holds nothing

    def _write(self) -> None:
        now = time.time()
        record = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                  "job": self.job, "started_at": now, "expires_at": now + self.ttl_s}
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(self.path, json.dumps(record).encode())

    def _live_holder(self, held: dict | None) -> dict | None:
        """The lease record if it belongs to another run that may still be alive."""
        if not held or held.get("owner") == self.owner:
            return None
        if held.get("host") == socket.gethostname():
            return held if _alive_here(int(held.get("pid", -1))) else None
        return held if float(held.get("expires_at", 0)) > time.time() else None

    def _busy(self, held: dict) -> OutputBusy:
        left = max(0, int(float(held.get("expires_at", 0)) - time.time()))
        return OutputBusy(
            f"output '{self.root}' is in use by another run (samdata {held.get('job')} on "
            f"host {held.get('host')}, pid {held.get('pid')}); wait for it to finish, or use "
            f"another output.path (its lease {LEASE_FILE} expires {left} s after that run "
            f"stops renewing it)")

    def acquire(self) -> None:
        held = self._live_holder(self._read())
        if held:
            raise self._busy(held)
        self._write()
        time.sleep(self.confirm_s)
        held = self._read()
        if held and held.get("owner") != self.owner:
            raise self._busy(held)
        self._thread = threading.Thread(target=self._renew, name="samdata-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a missed renewal is retried next period
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = self._read()
            if held and held.get("owner") == self.owner:
                self.fs.rm(self.path)
        except Exception:  # noqa: BLE001 - an unremoved lease expires by itself
            pass

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
