"""A throwaway `ray start` cluster on loopback for job-submission tests: own temp dir, own
ports (so it lives beside the session's local Ray), token auth on with a known token, its own
HOME (the user's ~/.ray is never touched), stopped by killing its process group."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


_HANDED_OUT: set[int] = set()  # ports given to a node in this process: never twice


def free_port() -> int:
    """A port free now and not handed out before by this process (the OS may return the same
    ephemeral port to consecutive probes, and Ray refuses two components on one port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _ports() -> list[str]:
    """Free ports for the per-node services that have fixed defaults (which would collide
    with the session's local Ray); workers take random ports."""
    args = []
    for flag in ("--object-manager-port", "--node-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                 "--metrics-export-port"):
        args += [flag, str(free_port())]
    return args + ["--min-worker-port", "0", "--max-worker-port", "0"]


class RayNode:
    """One `ray start --block` process (head or worker) in its own process group."""

    def __init__(self, args: list[str], env: dict, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([RAY, "start", "--block", *args], env=env,
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL, grace_s: float = 5.0) -> None:
        """Signal every process of the node at once: Ray puts its workers in process groups
        of their own, so they are found by the session `ray start` opened. What is left
        after `grace_s` gets SIGKILL."""
        for s in (sig, signal.SIGKILL):
            pids = _session_pids(self.proc.pid)
            for pid in pids:
                try:
                    os.kill(pid, s)
                except ProcessLookupError:
                    pass
            if not pids:
                break
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        self.proc.poll()


def _session_pids(sid: int) -> list[int]:
    """Pids of the processes in session `sid` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[3]) == sid:  # state ppid pgrp session
            pids.append(int(entry.name))
    return pids


class RayCluster:
    """A head (and optionally more nodes) on 127.0.0.1; `address` is the Jobs API URL."""

    def __init__(self, root: Path, token: str, num_cpus: int = 2) -> None:
        self.root, self.token = root, token
        # Ray's unix sockets live under the temp dir and may not exceed 107 bytes: keep it short
        self.temp_dir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")
        home = root / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                    "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0",
                    # job entrypoints run `python`: the venv's, as in the cluster image
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        self.nodes: list[RayNode] = []
        for attempt in range(3):  # a port taken by another process in between: new ports
            self.gcs_port, self.dashboard_port = free_port(), free_port()
            self.address = f"http://127.0.0.1:{self.dashboard_port}"
            self.head = RayNode(
                ["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port),
                 "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                 "--ray-client-server-port", str(free_port()), "--num-cpus", str(num_cpus),
                 "--temp-dir", self.temp_dir, "--include-dashboard", "true", *_ports()],
                self.env, root / f"head{attempt}.log")
            try:
                self._wait_up()
                return
            except RuntimeError as e:
                self.head.kill(signal.SIGTERM)
                if "port" not in str(e) or attempt == 2:
                    raise

    def add_node(self, num_cpus: int = 1, resources: str | None = None) -> RayNode:
        args = ["--address", f"127.0.0.1:{self.gcs_port}", "--node-ip-address", "127.0.0.1",
                "--num-cpus", str(num_cpus), *_ports()]
        if resources:
            args += ["--resources", resources]
        node = RayNode(args, self.env, self.root / f"node{len(self.nodes)}.log")
        self.nodes.append(node)
        return node

    def _wait_up(self, timeout: float = 120) -> None:
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.head.proc.poll() is not None:
                raise RuntimeError(f"ray head exited: {self.head.log.read_text()[-2000:]}")
            try:
                req = urllib.request.Request(f"{self.address}/api/version",
                                             headers={"Authorization": f"Bearer {self.token}"})
                urllib.request.urlopen(req, timeout=2)
                return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"ray head not up after {timeout}s: {self.head.log.read_text()[-2000:]}")

    def stop(self) -> None:
        for node in [*self.nodes, self.head]:
            node.kill(signal.SIGTERM)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
