"""Shared weight buffers between two processes: what one writes the other reads, and back; closing (or the owner's
exit) unlinks the file."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

from posttrain.rollout.shared_buffer import SharedBuffer, open_shared

# The other process: opens the handle, prints the sum of the owner's bytes, writes its own; then makes a buffer of its
# own, prints its path and exits without closing it.
OPENER = """
import pickle, sys
from posttrain.rollout.shared_buffer import SharedBuffer, open_shared
handle = pickle.loads(bytes.fromhex(sys.argv[1]))
device = "cuda:0" if handle["kind"] == "cuda" else "cpu"
buffer = open_shared(handle, device)
print(int(buffer.sum()))
buffer[:4] = 7
if device != "cpu":
    import torch
    torch.cuda.synchronize()
print(SharedBuffer.create(16, device).handle().get("path", "-"))
"""


def run_opener(handle: dict) -> list[str]:
    out = subprocess.run([sys.executable, "-c", OPENER, pickle.dumps(handle).hex()], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=True, timeout=120)
    return out.stdout.split()


def test_a_cpu_buffer_is_shared_with_another_process_and_unlinked_on_close():
    buffer = SharedBuffer.create(1000)
    buffer.tensor.copy_(torch.arange(1000) % 5)
    handle = buffer.handle()
    assert handle["kind"] == "cpu" and handle["nbytes"] == 1000 and str(os.getpid()) in handle["path"]
    assert pickle.loads(pickle.dumps(handle)) == handle  # plain data
    total, own = run_opener(handle)
    assert int(total) == 2000  # 200 of each of 0..4: the owner's bytes, no copy in between
    assert buffer.tensor[:5].tolist() == [7, 7, 7, 7, 4]  # and the opener's writes reach the owner
    assert own.startswith("/dev/shm/posttrain-weights-") and not os.path.exists(own)  # unlinked at its owner's exit
    buffer.close()
    assert not os.path.exists(handle["path"])
    with pytest.raises(FileNotFoundError, match="is gone"):
        open_shared(handle)


def test_a_handle_from_another_host_is_refused():
    buffer = SharedBuffer.create(8)
    try:
        with pytest.raises(ValueError, match="must share a machine"):
            open_shared({**buffer.handle(), "host": "elsewhere"})
    finally:
        buffer.close()


@pytest.mark.gpu
def test_a_cuda_buffer_is_shared_with_another_process_on_the_same_gpu():
    buffer = SharedBuffer.create(1000, "cuda")
    buffer.tensor.copy_(torch.arange(1000, device="cuda") % 5)
    handle = buffer.handle()
    assert handle["kind"] == "cuda" and pickle.loads(pickle.dumps(handle)) == handle
    total, _ = run_opener(handle)
    assert int(total) == 2000
    torch.cuda.synchronize()
    assert buffer.tensor[:5].tolist() == [7, 7, 7, 7, 4]
    with pytest.raises(ValueError, match="must share one GPU"):
        open_shared({**buffer.handle(), "uuid": "GPU-elsewhere"}, "cuda:0")
    buffer.close()
