"""rewards.judge: the llm_judge verifier against real HTTP servers on loopback.

The fast tests run a small OpenAI-compatible HTTP server in this process that
returns canned replies; the end-to-end test starts vLLM's OpenAI server with
the tiny model and scores through it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import rewards
from rewards.judge import parse_score


class CannedJudge:
    """An OpenAI-compatible /v1/chat/completions endpoint answering with queued replies."""

    def __init__(self):
        self.replies: list = []
        self.requests: list[dict] = []
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                reply = judge.replies.pop(0) if judge.replies else "Score: 5"
                if isinstance(reply, int):  # an HTTP error status
                    self.send_response(reply)
                    self.end_headers()
                    return
                payload = reply if isinstance(reply, bytes) else json.dumps(
                    {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge():
    server = CannedJudge()
    yield server
    server.close()


def test_scores_parsed_from_replies(judge):
    judge.replies = ["Reasoning... Score: 8", "7/10", " 10 ", "**Score:** 3", "score = 0"]
    scores = [rewards.score("llm_judge", "Paris", "Paris", endpoint=judge.endpoint, model="judge") for _ in range(5)]
    assert scores == [0.8, 0.7, 1.0, 0.3, 0.0]
    request = judge.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "judge" and request["body"]["temperature"] == 0.0
    assert "Paris" in request["body"]["messages"][0]["content"]


def test_prompt_template_key_and_extra_body(judge):
    judge.replies = ["Score: 2"]
    result = rewards.evaluate(
        "llm_judge", "<think>hidden</think>the answer", "ref", endpoint=judge.endpoint, model="m",
        prompt="Q={question} A={prediction} R={label} (score out of 4)", question="why?", max_score=4,
        api_key="secret-key", extra_body={"seed": 3}, max_tokens=5,
    )
    assert result.score == 0.5 and result.scored
    request = judge.requests[0]
    assert request["body"]["messages"][0]["content"] == "Q=why? A=the answer R=ref (score out of 4)"
    assert request["body"]["seed"] == 3 and request["body"]["max_tokens"] == 5
    assert request["auth"] == "Bearer secret-key"


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("I think it is good", "cannot score: no score in reply"),
        ("Score: 11", "cannot score: no score in reply"),
        ("Score: -1", "cannot score: no score in reply"),
        (b"not json at all", "cannot score: request failed: JSONDecodeError"),
        (json.dumps({"choices": []}).encode(), "cannot score: request failed: IndexError"),
        (500, "cannot score: request failed: HTTPError"),
    ],
)
def test_malformed_replies_cannot_be_scored(judge, reply, reason):
    judge.replies = [reply]
    result = rewards.evaluate("llm_judge", "x", "y", endpoint=judge.endpoint, model="judge")
    assert result.score == 0.0 and not result.scored
    assert result.reason.startswith(reason)


def test_missing_endpoint_is_a_recorded_error():
    result = rewards.evaluate("llm_judge", "x", "y")
    assert not result.scored and "endpoint" in result.reason


def test_judge_in_worker_processes(judge):
    judge.replies = ["Score: 9", "Score: 1", "garbage"]
    items = [{"verifier": "llm_judge", "prediction": p, "label": "r"} for p in ("a", "b", "c")]
    results = rewards.score_batch(items, max_workers=1, options={"llm_judge": {"endpoint": judge.endpoint, "model": "judge"}})
    assert sorted(r.score for r in results) == [0.0, 0.1, 0.9]
    assert len(judge.requests) == 3


def test_parse_score():
    assert parse_score("Score: 7.5") == 0.75
    assert parse_score("score is 6") == 0.6
    assert parse_score("3/5", max_score=5) == 0.6
    assert parse_score("3/5") is None
    assert parse_score("") is None
    assert parse_score("Score: 2 ... final Score: 9") == 0.9


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
@pytest.mark.slow
def test_llm_judge_through_vllm_server(tiny_dir, tmp_path):
    """vLLM's OpenAI server with the tiny model answers; the verifier reads a score from the reply.

    The tiny model writes noise, so the reply is constrained to a few score
    strings with vLLM's structured outputs: the whole path (HTTP, chat template,
    generation, parsing) runs for real and the score must be one of them.
    """
    port = _free_port()
    log = tmp_path / "vllm.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_dir / "base"),
               "--served-model-name", "tiny-judge", "--host", "127.0.0.1", "--port", str(port),
               "--max-model-len", "512", "--gpu-memory-utilization", "0.05", "--dtype", "float32"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, f"vLLM server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"vLLM server did not start:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{endpoint}/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(2)
        choices = ["Score: 2", "Score: 9"]
        result = rewards.evaluate("llm_judge", "Paris", "Paris", endpoint=endpoint, model="tiny-judge", max_tokens=8,
                                  question="What is the capital of France?", timeout=120,
                                  extra_body={"structured_outputs": {"choice": choices}})
        assert result.scored, result.reason
        assert result.score in (0.2, 0.9)
        free = rewards.evaluate("llm_judge", "Paris", "Paris", endpoint=endpoint, model="tiny-judge", max_tokens=8, timeout=120)
        assert free.score in (0.0, *[i / 10 for i in range(11)])
        assert free.scored or free.reason.startswith("cannot score: no score in reply")
    finally:
        os.killpg(server.pid, 9)
        server.wait()
