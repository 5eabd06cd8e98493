"""Run untrusted Python programs against test cases, and leave the host untouched.

One call, `run_program(program, cases)`, starts one sandbox: a fresh process
(the harness in `_sandbox_harness.py`, forked from a per-process zygote that
has already started Python; a one-shot harness when the zygote is busy) in a
new session, with an empty environment apart from PATH, HOME and TMPDIR
(nothing of the caller's environment reaches it), in its own temporary work
directory. The program is compiled once; each case then runs in a fresh
fork of the harness, so a case cannot see what an earlier one changed, and
costs a fork instead of an interpreter start. The zygote is trusted code
that never runs a program and keeps nothing between jobs.

What stops what, as root (CI, containers) with namespaces available:

- network: a new network namespace with no interfaces up; nothing connects
  anywhere, loopback included;
- other processes: a new pid namespace whose init is the harness; cases see
  only the sandbox's processes, cannot signal the harness (init ignores
  SIGKILL from inside) and, when the harness exits, the kernel kills every
  process left in the namespace;
- files: cases run as a private unprivileged uid (one per concurrent sandbox,
  from a locked range) with no supplementary groups and no_new_privs; /tmp,
  /var/tmp, /dev/shm and /run/lock are covered by empty read-only tmpfs
  mounts, so its work directory is the only place it can write (other
  sandboxes' directories are not even visible); directories the sandbox
  uid could not enter on the way to the interpreter (a Python under
  /root) are covered too, with only the library paths bound back,
  read-only; /proc is the namespace's own. It can still read what any
  user may read (world-readable files);
- resources: per case CPU seconds, address space, file size, open files,
  and processes (RLIMIT_NPROC, counted for the private uid alone); a
  wall-clock limit per case and for the whole run;
- leftovers: after every case, every other process of the sandbox is
  killed (kill(-1) as the sandbox uid) and reaped; the caller finally kills
  the harness's process group.

What is weaker elsewhere, and how it degrades:

- not root: the harness runs as the caller's user. It tries a user and
  network namespace (no network); if the OS refuses, sockets are refused by
  an audit hook instead. Files the user can write are protected only by that
  audit hook (writes and deletes outside the work directory are refused),
  and forking and running other programs are refused (so nothing can escape
  the process group that is killed after each case). Audit hooks bind Python
  code; ctypes is refused with them, but a native extension module can get
  past them.
- root without namespaces (a container without CAP_SYS_ADMIN): the private
  uid, limits and leftover killing stay; sockets and running other programs
  are refused by the audit hook, and world-writable directories (/tmp)
  are writable by the sandbox uid.
- memory is limited per process (address space), not per sandbox: at most
  `processes` x `memory_bytes` in total.
- a program that sets out to read the harness's own memory can forge an
  assert test's pass; it cannot escape the sandbox by doing so.
"""

from __future__ import annotations

import atexit
import fcntl
import marshal
import os
import select
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

HARNESS = Path(__file__).with_name("_sandbox_harness.py")
# Private uids for sandboxes run as root: one per concurrent sandbox, picked
# from this range under a file lock. High enough to own no files anywhere.
UID_BASE = 1_500_000_000
UID_SLOTS = 4096


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed program (per case unless said otherwise)."""

    cpu_seconds: int = 4
    wall_seconds: float = 6.0
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    open_files: int = 64
    processes: int = 32  # per sandbox (private uid), threads included
    output_bytes: int = 4 << 20


@dataclass(frozen=True)
class Isolation:
    """Which protections to ask for; `Isolation.auto()` picks what this machine allows."""

    namespaces: bool = True  # network (+ pid, mount as root) namespaces when the OS allows
    drop_user: bool = True  # run as a private uid (root only)
    audit_hook: bool = False  # in-process refusals; forced on when namespaces are unavailable

    @classmethod
    def auto(cls) -> "Isolation":
        root = os.geteuid() == 0
        return cls(namespaces=True, drop_user=root, audit_hook=not root)


@dataclass(frozen=True)
class Case:
    """One test: text for stdin, and/or code run after the program (e.g. an assert)."""

    stdin: str = ""
    code: Optional[str] = None


@dataclass
class CaseResult:
    """What one case did. `passed`: exited cleanly (and, with `code`, ran it to the end)."""

    status: str  # ok, failed, timeout, cpu limit, output limit, signal NAME, error
    passed: bool = False
    exit: Optional[int] = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0


@dataclass
class SandboxRun:
    cases: list[CaseResult]
    isolation: dict = field(default_factory=dict)  # what was actually in force
    error: str = ""  # set when the harness itself failed or ran out of time
    uid: Optional[int] = None  # the private uid the cases ran as (root only)
    workdir: str = ""  # removed by the time the run returns


def run_program(program: str, cases: Sequence[Case], limits: Limits = Limits(), isolation: Optional[Isolation] = None) -> SandboxRun:
    """Run `program` once per case in one sandbox; never raises for anything the program does."""
    isolation = isolation or Isolation.auto()
    cases = list(cases)
    with _uid_slot(isolation) as uid, _workdir(uid) as workdir:
        job = {
            "program": program,
            "cases": [asdict(c) for c in cases],
            "limits": asdict(limits),
            "isolation": {"namespaces": isolation.namespaces, "uid": uid, "audit_hook": isolation.audit_hook},
            "workdir": str(workdir),
            "parent_pid": os.getpid(),
            "site_packages": site.getsitepackages(),  # importable by programs, without .pth side effects
        }
        job["total_seconds"] = 5.0 + len(cases) * (limits.wall_seconds + 0.5)
        status, out, detail = _run_job(job)
        if uid is not None and status != 0:
            _kill_uid(uid)  # the harness died early or ran out of time: nothing of the sandbox may survive it
    where = {"uid": uid, "workdir": str(workdir)}
    if status == "timeout":
        return SandboxRun([CaseResult("timeout") for _ in cases], error="sandbox run exceeded its total time", **where)
    try:
        report = marshal.loads(out)
    except (EOFError, ValueError, TypeError):
        report = {"error": detail or f"no report (exit status {status})"}
    if "error" in report:
        return SandboxRun([CaseResult("error") for _ in cases], error=f"sandbox harness failed: {report['error']}", **where)
    return SandboxRun([CaseResult(**c) for c in report["cases"]], report["isolation"], **where)


_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_COMMAND = [sys.executable, "-I", "-S", "-B", str(HARNESS)]  # no site: 20 ms instead of 100+ to start


def _run_job(job: dict) -> tuple[Any, bytes, str]:
    """(exit status or "timeout", report bytes, error detail): through this process's zygote when free."""
    zygote = _Zygote.get()
    if zygote is not None:
        try:
            return zygote.run(job)
        finally:
            zygote.lock.release()
    return _run_once(job)


def _run_once(job: dict) -> tuple[Any, bytes, str]:
    """One harness process for one job (used while this process's zygote is busy in another thread)."""
    proc = subprocess.Popen(_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=job["workdir"], env=_ENV)  # the harness calls setsid() itself: subprocess may vfork
    try:
        out, err = proc.communicate(marshal.dumps(job), timeout=job["total_seconds"])
        lines = err.decode("utf-8", "replace").strip().splitlines()
        return proc.returncode, out, lines[-1] if lines else ""
    except subprocess.TimeoutExpired:
        return "timeout", b"", ""
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


class _Zygote:
    """A long-lived harness in `--serve` mode that forks a fresh sandbox per job (one per process)."""

    _current: Optional["_Zygote"] = None
    _guard = threading.Lock()

    def __init__(self):
        self.owner = os.getpid()
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(_COMMAND + ["--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd="/", env=_ENV)

    @classmethod
    def get(cls) -> Optional["_Zygote"]:
        """This process's zygote, locked for the caller; None when another thread holds it."""
        with cls._guard:
            zygote = cls._current
            if zygote is None or zygote.owner != os.getpid() or zygote.proc.poll() is not None:
                zygote = cls._current = cls()
            if not zygote.lock.acquire(blocking=False):
                return None
            return zygote

    def run(self, job: dict) -> tuple[Any, bytes, str]:
        try:
            data = marshal.dumps(job)
            self.proc.stdin.write(len(data).to_bytes(8, "little") + data)
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], job["total_seconds"] + 10)
            head = self.proc.stdout.read(8) if ready else b""
            if len(head) < 8:
                raise OSError("sandbox zygote stopped answering")
            status, out = marshal.loads(self.proc.stdout.read(int.from_bytes(head, "little")))
            return status, out, ""
        except (OSError, EOFError, ValueError) as err:
            self.close()  # the next job starts a new one
            return 1, b"", str(err)

    def close(self) -> None:
        _kill_group(self.proc)


@atexit.register
def _close_zygote() -> None:
    zygote = _Zygote._current
    if zygote is not None and zygote.owner == os.getpid():
        zygote.close()


def _kill_uid(uid: int) -> None:
    """Kill every process of a sandbox uid, through the harness's cleanup mode."""
    subprocess.run([sys.executable, "-I", "-S", "-B", str(HARNESS)], input=marshal.dumps({"kill_uid": uid}), env={}, timeout=30, check=False)


@contextmanager
def _uid_slot(isolation: Isolation) -> Iterator[Optional[int]]:
    """A private uid held for the duration of one run (None when not dropping privileges).

    The slot's lock file says "1" while a run holds it; a slot found so (its
    holder was killed, e.g. a reward worker past its timeout) has every
    process of its uid killed before it is reused.
    """
    if not (isolation.drop_user and os.geteuid() == 0):
        yield None
        return
    locks = Path(tempfile.gettempdir()) / "posttrain-sandbox-uids"
    locks.mkdir(mode=0o700, exist_ok=True)
    start = (os.getpid() * 7919 + time.monotonic_ns()) % UID_SLOTS
    for i in range(UID_SLOTS):
        slot = (start + i) % UID_SLOTS
        fd = os.open(locks / f"{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            if os.pread(fd, 1, 0) == b"1":  # its last holder was killed mid-run: clear what it left
                _kill_uid(UID_BASE + slot)
            os.pwrite(fd, b"1", 0)
            yield UID_BASE + slot
            os.ftruncate(fd, 0)  # finished cleanly: no processes of this uid are left
        finally:
            os.close(fd)
        return
    raise RuntimeError(f"all {UID_SLOTS} sandbox uids are in use")


@contextmanager
def _workdir(uid: Optional[int]) -> Iterator[Path]:
    """A fresh work directory, owned by the sandbox uid; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=_base_dir()))
    try:
        if uid is not None:
            os.chown(path, uid, uid)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_swept: set[Path] = set()


def _base_dir() -> Path:
    """The parent of all work directories (traversable, not listable, by sandbox uids).

    A process killed mid-run (a reward worker past its timeout) cannot remove
    its work directories; each process sweeps those of dead processes once.
    """
    base = Path(tempfile.gettempdir()) / f"posttrain-sandbox-{os.geteuid()}"
    base.mkdir(exist_ok=True)
    if base not in _swept:
        base.chmod(0o711)
        _swept.add(base)
        for entry in base.iterdir():
            owner = entry.name.split("-", 1)[0]
            if owner.isdigit() and not _alive(int(owner)):
                shutil.rmtree(entry, ignore_errors=True)
    return base


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
