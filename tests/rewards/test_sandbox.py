"""rewards.sandbox: hostile programs score nothing and leave the host untouched.

Every test runs under three isolation settings: what this machine gives by
default (as root: namespaces and a private uid), and two that stand in for
a machine without root: user + network namespaces with the audit hook, and
the audit hook alone (the weakest). The hostile programs are real: they
loop, fork, allocate, write, delete, connect, signal and snoop.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

import rewards
from rewards.sandbox import Case, Isolation, Limits, run_program

MODES = {
    "default": None,
    "user-namespaces": Isolation(namespaces=True, drop_user=False, audit_hook=True),
    "hook-only": Isolation(namespaces=False, drop_user=False, audit_hook=True),
}
FAST = Limits(cpu_seconds=1, wall_seconds=2.0, processes=24, memory_bytes=512 << 20)


@pytest.fixture(params=list(MODES))
def isolation(request):
    return MODES[request.param]


def leftovers(workdir: str) -> list[int]:
    """Pids of live processes whose environment names the sandbox's work directory."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if workdir.encode() in environ and state != "Z":
            found.append(int(entry))
    return found


def test_leftover_check_sees_a_live_process(tmp_path):
    marker = str(tmp_path / "posttrain-sandbox-marker")
    proc = subprocess.Popen(["sleep", "30"], env={"TMPDIR": marker})
    try:
        assert leftovers(marker) == [proc.pid]
    finally:
        proc.kill()
        proc.wait()
    assert leftovers(marker) == []


def test_default_isolation_uses_what_root_allows():
    run = run_program("print('hi')", [Case()])
    assert run.cases[0].passed and run.cases[0].stdout == "hi\n"
    if os.geteuid() == 0:
        assert run.isolation["namespaces"] is True and run.uid is not None and run.isolation["audit_hook"] is False
    else:
        assert run.isolation["audit_hook"] is True and run.uid is None


def test_honest_program_passes(isolation):
    program = "import sys, collections\ndef f(x):\n    return x + 1\ndata = sys.stdin.read()\nif data:\n    print(f(int(data)))\n"
    run = run_program(program, [Case(stdin="41"), Case(code="assert f(1) == 2"), Case(code="assert f(1) == 3")], FAST, isolation)
    assert [c.passed for c in run.cases] == [True, True, False]
    assert run.cases[0].stdout == "42\n"
    assert "AssertionError" in run.cases[2].stderr


def test_infinite_loop_is_stopped(isolation):
    start = time.monotonic()
    run = run_program("while True:\n    pass\n", [Case(code="pass")], FAST, isolation)
    assert run.cases[0].status in ("timeout", "cpu limit") and not run.cases[0].passed
    assert time.monotonic() - start < FAST.wall_seconds + 5
    assert leftovers(run.workdir) == []


def test_fork_storm_is_contained_and_cleaned_up(isolation):
    program = (
        "import os, time\n"
        "children = 0\n"
        "while children < 10000:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "        children += 1\n"
        "    except BaseException as err:\n"
        "        print('fork refused:', type(err).__name__, flush=True)\n"
        "        break\n"
        "time.sleep(60)\n"
    )
    run = run_program(program, [Case()], FAST, isolation)
    case = run.cases[0]
    assert not case.passed and "fork refused" in case.stdout
    assert leftovers(run.workdir) == []
    assert os.fork.__name__ == "fork"  # the test process itself is untouched and can go on
    if run.uid is not None:
        assert not [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == run.uid]


def _uid_of(pid: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def test_memory_bomb_fails_only_its_own_test():
    answer = (
        "```python\n"
        "data = input()\n"
        "if data == 'bomb':\n"
        "    hoard = []\n"
        "    while True:\n"
        "        hoard.append(bytearray(64 << 20))\n"
        "print(int(data) * 2)\n"
        "```"
    )
    label = {"tests": [{"input": "3", "output": "6"}, {"input": "bomb", "output": "0"}, {"input": "5", "output": "10"}]}
    result = rewards.evaluate("code_stdio", answer, label, memory_mb=256)
    assert result.score == pytest.approx(2 / 3)
    assert "MemoryError" in result.reason


def test_infinite_loop_fails_only_its_own_test():
    answer = "def f(x):\n    while x < 0:\n        pass\n    return x\n"
    label = {"tests": ["assert f(1) == 1", "assert f(-1) == -1", "assert f(2) == 2"]}
    result = rewards.evaluate("code", answer, label, cpu_seconds=1, wall_seconds=2)
    assert result.score == pytest.approx(2 / 3)


def test_files_outside_the_work_directory_are_untouched(isolation, tmp_path):
    tag = uuid.uuid4().hex[:8]
    shared = Path(os.environ.get("TMPDIR", "/tmp"))
    victim = shared / f"posttrain-victim-{tag}"
    victim.write_text("original")
    victim.chmod(0o666)  # writable by anyone who can see it
    private = tmp_path / "private.txt"
    private.write_text("original")
    created = shared / f"posttrain-created-{tag}"
    program = f"""
import os, shutil
attempts = [
    lambda: open({str(victim)!r}, "w").write("pwned"),
    lambda: open({str(victim)!r}, "a").write("pwned"),
    lambda: os.remove({str(victim)!r}),
    lambda: os.rename({str(victim)!r}, "stolen"),
    lambda: os.chmod({str(victim)!r}, 0o777),
    lambda: open({str(private)!r}, "w").write("pwned"),
    lambda: os.remove({str(private)!r}),
    lambda: shutil.rmtree({str(tmp_path)!r}),
    lambda: open({str(created)!r}, "w").write("pwned"),
    lambda: os.symlink("/etc/passwd", {str(created)!r}),
]
for attempt in attempts:
    try:
        attempt()
        print("done")
    except Exception as err:
        print("refused", type(err).__name__)
open("inside.txt", "w").write("fine")
print(open("inside.txt").read())
"""
    try:
        run = run_program(program, [Case()], FAST, isolation)
        case = run.cases[0]
        assert case.passed, case.stderr
        assert case.stdout.splitlines()[-1] == "fine"  # its own directory is writable
        assert victim.read_text() == "original" and oct(victim.stat().st_mode & 0o777) == oct(0o666)
        assert private.read_text() == "original"
        assert not created.exists() and not created.is_symlink()
    finally:
        victim.unlink(missing_ok=True)
        created.unlink(missing_ok=True)


def test_no_connection_reaches_a_local_listener(isolation):
    received: list[bytes] = []
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            received.append(conn.recv(100) or b"<connected>")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    program = f"""
import socket
for family, address in [(socket.AF_INET, ("127.0.0.1", {port})), (socket.AF_INET, ("localhost", {port}))]:
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(1)
        s.connect(address)
        s.sendall(b"leak")
        print("connected")
    except Exception as err:
        print("refused", type(err).__name__)
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"leak", ("127.0.0.1", {port}))
    print("sent")
except Exception as err:
    print("refused", type(err).__name__)
"""
    try:
        run = run_program(program, [Case()], FAST, isolation)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(2)
        server.close()
    assert received == []
    assert "connected" not in run.cases[0].stdout


def test_killing_the_parent_does_not_stop_the_sandbox(isolation):
    attack = """
import os, signal
for attempt in (lambda: os.kill(os.getppid(), signal.SIGKILL),
                lambda: os.kill(os.getppid(), signal.SIGTERM),
                lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGKILL),
                lambda: os.kill(1, signal.SIGKILL)):
    try:
        attempt()
    except Exception as err:
        print("refused", type(err).__name__, flush=True)
"""
    cases = [Case(code=attack), Case(code="print('still here')")]
    if isolation is None and os.geteuid() == 0:  # inside the pid namespace kill(-1) reaches only the sandbox
        cases.insert(1, Case(code="import os, signal\nos.kill(-1, signal.SIGKILL)"))
    run = run_program("", cases, FAST, isolation)
    last = run.cases[-1]
    assert run.error == ""
    assert last.passed and last.stdout == "still here\n"
    assert os.getppid() > 1  # and this test process (with its parent) is alive to check


def test_parent_environment_does_not_leak(isolation, monkeypatch):
    secret = f"posttrain-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("POSTTRAIN_TEST_SECRET", secret)
    program = """
import os
print(dict(os.environ))
for pid in ["self", str(os.getppid()), "1"] + sorted(p for p in os.listdir("/proc") if p.isdigit()):
    for what in ("environ", "cmdline"):
        try:
            print(pid, open(f"/proc/{pid}/{what}", "rb").read())
        except Exception:
            pass
"""
    run = run_program(program, [Case()], FAST, isolation)
    case = run.cases[0]
    assert case.passed, case.stderr
    assert "PATH" in case.stdout  # it did print its environment
    assert secret not in case.stdout and "POSTTRAIN_TEST_SECRET" not in case.stdout


def test_nothing_is_left_running(isolation):
    program = """
import os, time
try:
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(600)
        os._exit(0)
    print("daemon started")
except Exception as err:
    print("refused", type(err).__name__)
"""
    run = run_program(program, [Case(), Case()], FAST, isolation)
    assert run.cases[0].passed, run.cases[0].stderr
    assert leftovers(run.workdir) == []


def test_work_directories_of_dead_processes_are_swept():
    from rewards import sandbox

    finished = subprocess.Popen(["true"])
    finished.wait()
    stale = sandbox._base_dir() / f"{finished.pid}-stale"
    stale.mkdir()
    (stale / "leftover.txt").write_text("from a worker killed mid-run")
    mine = sandbox._base_dir() / f"{os.getpid()}-current"
    mine.mkdir()
    try:
        sandbox._swept.clear()
        run_program("print(1)", [Case()])
        assert not stale.exists()
        assert mine.exists()  # a live process's directory is kept
    finally:
        mine.rmdir()


def test_file_size_and_open_file_limits():
    limits = Limits(file_size_bytes=1 << 20, open_files=32)
    big = "with open('big.bin', 'wb') as f:\n    f.write(b'x' * (4 << 20))\n"
    many = "handles = [open('f%d' % i, 'w') for i in range(100)]\n"
    run = run_program("", [Case(code=big), Case(code=many), Case(code="open('small', 'w').write('ok')")], limits)
    assert "File too large" in run.cases[0].stderr and not run.cases[0].passed
    assert "Too many open files" in run.cases[1].stderr and not run.cases[1].passed
    assert run.cases[2].passed


def test_uid_left_dirty_by_a_killed_run_is_cleaned_before_reuse(monkeypatch):
    from rewards import sandbox

    if os.geteuid() != 0:  # private uids exist only for root; nothing to clean up otherwise
        assert run_program("print(1)", [Case()]).uid is None
        return
    slot = 4000
    uid = sandbox.UID_BASE + slot
    lock = Path(sandbox.tempfile.gettempdir()) / "posttrain-sandbox-uids" / f"{slot}.lock"
    lock.parent.mkdir(mode=0o700, exist_ok=True)
    lock.write_bytes(b"1")  # as a run killed mid-way leaves it
    orphan = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "60"])
    try:
        time.sleep(0.3)
        assert _uid_of(str(orphan.pid)) == uid
        # land on this slot: the search starts at (pid * 7919 + monotonic_ns) % UID_SLOTS
        monkeypatch.setattr(sandbox.time, "monotonic_ns", lambda: slot - (os.getpid() * 7919) % sandbox.UID_SLOTS)
        run = run_program("print(1)", [Case()])
        monkeypatch.undo()
        assert run.uid == uid and run.cases[0].passed
        assert orphan.wait(10) == -9
        assert lock.read_bytes() == b""
    finally:
        if orphan.poll() is None:
            orphan.kill()
