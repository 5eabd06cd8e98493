"""`llm_judge`: ask a model behind an OpenAI-compatible endpoint for a score.

Context (recipe `verifiers.options.llm_judge`, or per row):

- `endpoint`: base URL of the server, e.g. `http://127.0.0.1:8000/v1` (a
  `vllm.entrypoints.openai.api_server` or any OpenAI-compatible server);
- `model`: the served model name;
- `prompt`: a template with `{prediction}`, `{label}` and `{question}`
  (the row's `question` context key, empty when absent); the default asks
  for "Score: N" on a 0-10 scale;
- `max_score` (10), `max_tokens` (32), `temperature` (0), `timeout` (30 s),
  `api_key` (sent as a Bearer token when given), `extra_body` (merged into
  the request, e.g. vLLM's `structured_outputs`).

The score is the last "score: N" (or "N/max") in the reply, else a reply
that is only a number, divided by `max_score`. A reply with no readable
score, a score outside [0, max_score], or a failed request cannot be
scored: 0, with the reason.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from rewards.core import Result, register

DEFAULT_PROMPT = (
    "You are grading an answer.\n"
    "Question: {question}\n"
    "Reference answer: {label}\n"
    "Answer to grade: {prediction}\n"
    "How good is the answer, from 0 (wrong) to 10 (perfect)? Reply with 'Score: N' and nothing else."
)
_LABELLED = re.compile(r"score\s*(?:[:=]|is)\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_FRACTION = re.compile(r"(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")
_BARE = re.compile(r"\s*\**\s*(-?\d+(?:\.\d+)?)\s*\**\s*\.?\s*")


def parse_score(reply: str, max_score: float = 10.0) -> Optional[float]:
    """A score in [0, 1] read from a judge's reply, or None when there is none.

    >>> parse_score("The answer is right. Score: 8")
    0.8
    >>> parse_score("7/10")
    0.7
    >>> parse_score(" 10 ")
    1.0
    >>> parse_score("I cannot decide") is None
    True
    >>> parse_score("Score: 12") is None
    True
    """
    labelled = _LABELLED.findall(reply)
    if labelled:
        value = float(labelled[-1])
    else:
        fractions = [(float(n), float(d)) for n, d in _FRACTION.findall(reply) if float(d) == float(max_score)]
        bare = _BARE.fullmatch(reply)
        if fractions:
            value = fractions[-1][0]
        elif bare:
            value = float(bare.group(1))
        else:
            return None
    if not 0 <= value <= max_score:
        return None
    return value / max_score


def chat(endpoint: str, model: str, content: str, *, max_tokens: int = 32, temperature: float = 0.0, timeout: float = 30.0,
         api_key: Optional[str] = None, extra_body: Optional[dict] = None) -> str:
    """One chat completion over HTTP; returns the reply text (raises on HTTP or protocol errors)."""
    import urllib.request

    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": temperature}
    body.update(extra_body or {})
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    url = endpoint.rstrip("/") + "/chat/completions"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = json.loads(response.read())
    return payload["choices"][0]["message"]["content"] or ""


@register("llm_judge")
def llm_judge(prediction: str, label: Any, endpoint: Optional[str] = None, model: Optional[str] = None, prompt: str = DEFAULT_PROMPT,
              question: str = "", max_score: float = 10.0, max_tokens: int = 32, temperature: float = 0.0, timeout: float = 30.0,
              api_key: Optional[str] = None, extra_body: Optional[dict] = None, **context: Any) -> Result:
    """A judge model's score for the answer, scaled to [0, 1].

    >>> import rewards
    >>> rewards.evaluate("llm_judge", "Paris", "Paris", endpoint="http://127.0.0.1:9", model="judge", timeout=2).reason
    'cannot score: request failed: URLError'
    """
    if not endpoint or not model:
        raise ValueError("llm_judge needs `endpoint` and `model` (recipe verifiers.options.llm_judge)")
    content = prompt.format(prediction=prediction, label="" if label is None else label, question=question)
    try:
        reply = chat(endpoint, model, content, max_tokens=max_tokens, temperature=temperature, timeout=timeout,
                     api_key=api_key, extra_body=extra_body)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:  # urllib's errors are OSErrors
        return Result(None, f"cannot score: request failed: {type(err).__name__}")
    value = parse_score(reply, max_score)
    if value is None:
        return Result(None, f"cannot score: no score in reply {reply[:200]!r}")
    return Result(value, f"judge replied {reply[:80]!r}")
