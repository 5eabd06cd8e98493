"""A real multi-node Ray cluster on one machine: a head and raylets started with `ray start`, as a user does.

Not a test module. Each node is a `ray start --block` process in a session of
its own, started from its own working directory, with its own CPUs and custom
resources, and without the driver's PYTHONPATH (it imports whatever posttrain
its environment has installed, as a node on another machine would). `stop()`
ends each node's session: SIGTERM to `ray start` (which stops its raylet and
agents), then SIGKILL to whatever of that session is left (workers included).
Never `ray stop`: it would stop every Ray on the machine.

`hide` starts a node in a mount namespace of its own in which that directory
is an empty tmpfs: a node that does not see a path the driver sees, through
the real filesystem (root: `unshare -m`; otherwise a user namespace,
`unshare -Urm`). `can_hide()` says whether this machine allows it.

Token authentication (Ray 2.60 turns it on when ~/.ray/auth_token exists) is
off for these nodes: a joining node needs RAY_AUTH_MODE=token set by hand, and
a test cluster reachable only from this machine has no use for it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
STARTED = "Ray runtime started."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unshare_prefix() -> list[str]:
    return ["unshare", "-m", "--propagation", "private"] if os.geteuid() == 0 else ["unshare", "-Urm"]


def can_hide() -> bool:
    """Whether a process can get a mount namespace of its own here (and mount a tmpfs in it)."""
    if shutil.which("unshare") is None:
        return False
    probe = tempfile.mkdtemp(prefix="pt-hide-")
    try:
        cmd = [*unshare_prefix(), "sh", "-c", f"mount -t tmpfs tmpfs {probe}"]
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        os.rmdir(probe)


class RayNodes:
    """Nodes of one cluster on this machine; see the module docstring."""

    def __init__(self, logs: Path):
        self.logs = Path(logs)
        self.logs.mkdir(parents=True, exist_ok=True)
        # Ray's unix sockets live under the temp dir: keep its path short (sockets allow about 107 bytes)
        self.temp_dir = tempfile.mkdtemp(prefix="pt-ray-", dir="/tmp")
        self.address: str | None = None
        self.procs: list[subprocess.Popen] = []
        self.logs_by_name: dict[str, Path] = {}

    def _start(self, name: str, cwd: Path, args: list[str], prefix: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
        env["RAY_AUTH_MODE"] = "disabled"
        ports = {"--node-manager-port": free_port(), "--object-manager-port": free_port(),
                 "--dashboard-agent-listen-port": free_port(), "--runtime-env-agent-port": free_port(),
                 "--metrics-export-port": free_port()}
        cmd = [*prefix, RAY, "start", "--block", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
               "--object-store-memory=100000000", *args, *(f"{k}={v}" for k, v in ports.items())]
        log = self.logs / f"{name}.log"
        Path(cwd).mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        self.logs_by_name[name] = log

    def start_head(self, cwd: Path, *, cpus: int, resources: dict[str, float]) -> str:
        """Launch the head (`wait` for it); its address, which nodes may join at once (they wait for it)."""
        port = free_port()
        self._start("head", cwd, ["--head", f"--port={port}", f"--num-cpus={cpus}", f"--resources={json.dumps(resources)}",
                                  "--include-dashboard=false", f"--dashboard-port={free_port()}",
                                  f"--ray-client-server-port={free_port()}"], [])
        self.address = f"127.0.0.1:{port}"
        return self.address

    def add_node(self, name: str, cwd: Path, *, cpus: int, resources: dict[str, float], hide: Path | None = None) -> None:
        """Launch a raylet joining the head (`wait` for it)."""
        prefix = []
        if hide is not None:  # mount an empty tmpfs over `hide`, then become `ray start` (same pid, same session)
            prefix = [*unshare_prefix(), "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hide)]
        self._start(name, cwd, [f"--address={self.address}", f"--num-cpus={cpus}",
                                f"--resources={json.dumps(resources)}"], prefix)

    def wait(self, timeout_s: float = 180) -> None:
        """Until every node launched says it started; a node that exits or takes longer fails with its log."""
        deadline = time.time() + timeout_s
        for proc, (name, log) in zip(self.procs, self.logs_by_name.items()):
            while STARTED not in log.read_text():
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ray node {name} did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
                time.sleep(0.2)

    def stop(self, timeout_s: float = 30) -> None:
        """End every process of every node's session (ours alone: each `ray start` leads its own session)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.time() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs:
            for pid in session_members(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if proc.poll() is None:
                proc.wait(10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def session_members(sid: int) -> list[int]:
    """Pids of the live processes in session `sid` (from /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # after "pid (comm)": state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids
