"""The verifier registry and in-process scoring.

A verifier is a callable `(prediction, label, **context) -> float | bool | None |
Result`. `evaluate` looks it up by name, hands it the answer part of the
prediction (the text after the last `</think>`), and turns whatever it returns
into a `Result` with a score in [0, 1]:

- a number or bool is clamped to [0, 1] (NaN scores 0);
- `None` means "cannot score": 0, with the reason recorded and counted;
- an exception scores 0, with the exception recorded and counted.

Several verifiers on one item combine as a weighted mean, or, when each
carries its own label (open-instruct's multi-verifier rows), as a sum
(`evaluate`).

Only an unknown verifier name raises (`UnknownNameError`, listing the valid
names): that is a configuration error, found before any work starts.

This module imports nothing heavy; verifiers import their libraries lazily.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from rewards.registry import Registry, UnknownNameError

__all__ = [
    "ENTRY_POINT_GROUP",
    "Result",
    "UnknownNameError",
    "VERIFIERS",
    "answer_text",
    "evaluate",
    "get",
    "full_score",
    "labelled_parts",
    "load_plugins",
    "names",
    "parse_spec",
    "register",
    "score",
    "unscored_counts",
]

ENTRY_POINT_GROUP = "posttrain.verifiers"

Verifier = Callable[..., Any]
VERIFIERS: Registry[Verifier] = Registry("verifier")

# Verifiers that see the raw prediction, <think> block included (e.g. `format`).
_RAW: set[str] = set()
_UNSCORED: Counter[str] = Counter()
_LOCK = threading.RLock()
_entry_points_loaded = False


@dataclass(frozen=True)
class Result:
    """One scored item: `score` in [0, 1] (a sum for specs with labelled entries, see `evaluate`) and why.

    `scored` is False when the verifier could not score the item (it returned
    None, raised, timed out or crashed); the score is then 0. A verifier may
    itself return a `Result` to give a reason (`Result(None, "no answer")`
    means "cannot score"). Supports `result["score"]` as well as `result.score`.

    >>> r = Result(1.0, "2/2 tests passed")
    >>> r["score"], r.reason
    (1.0, '2/2 tests passed')
    """

    score: Optional[float]
    reason: str = ""
    scored: bool = True

    def __getitem__(self, key: str) -> Any:
        if key not in ("score", "reason", "scored"):
            raise KeyError(key)
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "reason": self.reason, "scored": self.scored}


# --------------------------------------------------------------------------
# Registration


def register(name: str, *, raw: bool = False, override: bool = False):
    """Decorator: register a verifier function or class under `name`.

    A function is registered as is. A class is instantiated once, with no
    arguments, at registration, and the instance is called for every item
    (keep per-call state out of it); an already-built instance with
    `__call__` can be registered with `register(name)(instance)`.
    `raw=True` hands the verifier the whole prediction, `<think>` block
    included, instead of the text after the last `</think>`.

    Registering the same definition again (a module imported twice, as in
    worker processes) is a no-op; a different object under a taken name raises.
    """

    def add(obj: Any) -> Any:
        verifier = obj() if inspect.isclass(obj) else obj
        if not callable(verifier):
            raise TypeError(f"verifier {name!r} must be callable, got {type(obj).__name__}")
        origin = obj if inspect.isclass(obj) else verifier
        _set_origin(verifier, origin)
        existing = VERIFIERS._items.get(name) if name in VERIFIERS else None
        same = existing is not None and _origin(existing) == _origin(verifier)
        VERIFIERS.register(name, verifier, override=override or same)
        if raw:
            _RAW.add(name)
        else:
            _RAW.discard(name)
        return obj

    return add


def _set_origin(verifier: Any, origin: Any) -> None:
    """Remember where a verifier was defined, so worker processes can import it."""
    module = getattr(origin, "__module__", None)
    qualname = getattr(origin, "__qualname__", None)
    try:
        verifier.__posttrain_origin__ = (module, qualname)
    except (AttributeError, TypeError):  # builtins and slotted objects: fall back to the class
        pass


def _origin(verifier: Any) -> tuple[Optional[str], Optional[str]]:
    found = getattr(verifier, "__posttrain_origin__", None)
    if found is not None:
        return found
    kind = verifier if inspect.isfunction(verifier) else type(verifier)
    return getattr(kind, "__module__", None), getattr(kind, "__qualname__", None)


def origin(name: str) -> tuple[Optional[str], Optional[str]]:
    """(module, qualname) where the verifier `name` was defined."""
    return _origin(get(name))


def get(name: str) -> Verifier:
    """The verifier registered under `name`; unknown names list the valid ones."""
    _load_entry_points()
    return VERIFIERS.get(name)


def names() -> list[str]:
    """Sorted names of all registered verifiers (built-in, plugins, entry points)."""
    _load_entry_points()
    return VERIFIERS.names()


def load_plugins(modules: Iterable[str]) -> list[str]:
    """Import modules that register verifiers (the recipe's `verifiers.modules`).

    Returns the verifier names that appeared. A module that cannot be imported
    raises ImportError naming it.
    """
    before = set(VERIFIERS.names())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"verifier module {module!r} (verifiers.modules) cannot be imported: {err}") from err
    return sorted(set(VERIFIERS.names()) - before)


def _load_entry_points() -> None:
    """Load the `posttrain.verifiers` entry points once per process.

    An entry point's name is the verifier name; its value is either a module
    (`pkg.rewards`, whose import registers verifiers) or a callable
    (`pkg.rewards:my_verifier`), registered under the entry point's name unless
    its import already registered that name.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    with _LOCK:
        if _entry_points_loaded:
            return
        from importlib.metadata import entry_points

        _entry_points_loaded = True
        try:
            for point in entry_points(group=ENTRY_POINT_GROUP):
                load_entry_point(point)
        except BaseException:
            _entry_points_loaded = False  # a broken plugin keeps failing loudly, not half-loaded
            raise


def load_entry_point(point: Any) -> None:
    """Register what one `posttrain.verifiers` entry point names (see `_load_entry_points`)."""
    try:
        obj = point.load()
    except Exception as err:  # a broken plugin must say which one it is
        raise ImportError(f"entry point {point.name!r} = {point.value!r} in group {ENTRY_POINT_GROUP!r} failed to load: {err}") from err
    if point.name not in VERIFIERS and not inspect.ismodule(obj):
        register(point.name)(obj)


def reload_entry_points() -> None:
    """Forget that entry points were loaded (after installing a plugin at run time)."""
    global _entry_points_loaded
    _entry_points_loaded = False


# --------------------------------------------------------------------------
# Scoring


Spec = Union[str, list, tuple, Mapping[str, float]]


def parse_spec(spec: Spec) -> tuple[tuple[str, float], ...]:
    """A row's `verifier` value as ((name, weight), ...), names checked.

    Accepted: a name; a list of names (equal weights); a list of
    `[name, weight]` pairs; a mapping name -> weight; a list of entries
    `{"name": ..., "label": ..., "weight": ...}` that carry their own labels
    (weight defaults to 1; see `labelled_parts`). Raises on unknown names and
    malformed specs: those are configuration errors.

    >>> parse_spec("math")
    (('math', 1.0),)
    >>> parse_spec({"math": 3, "format": 1})
    (('math', 3.0), ('format', 1.0))
    >>> parse_spec([{"name": "math", "label": "4"}, {"name": "ifeval", "label": "{}", "weight": 2}])
    (('math', 1.0), ('ifeval', 2.0))
    """
    parts = spec_parts(spec)
    for name, _ in parts:
        get(name)
    return parts


def spec_parts(spec: Spec) -> tuple[tuple[str, float], ...]:
    """The structure of a `verifier` value, as in `parse_spec`, without checking names."""
    if isinstance(spec, str):
        parts = [(spec, 1.0)]
    elif isinstance(spec, Mapping):
        parts = [(str(k), float(v)) for k, v in spec.items()]
    elif labelled := labelled_parts(spec):
        parts = [(name, weight) for name, weight, _ in labelled]
    elif isinstance(spec, (list, tuple)) and spec:
        parts = []
        for entry in spec:
            if isinstance(entry, str):
                parts.append((entry, 1.0))
            elif isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str):
                parts.append((entry[0], float(entry[1])))
            else:
                raise ValueError(f"verifier list entries must be names or [name, weight] pairs, got {entry!r}")
    else:
        raise ValueError(f"verifier must be a name, a list of names or [name, weight] pairs, or a mapping; got {spec!r}")
    for name, weight in parts:
        if not name:
            raise ValueError("verifier names must not be empty")
        if not weight >= 0 or math.isinf(weight):
            raise ValueError(f"verifier weight for {name!r} must be finite and >= 0, got {weight}")
    if sum(w for _, w in parts) <= 0:
        raise ValueError(f"verifier weights must not all be zero: {spec!r}")
    return tuple(parts)


LABELLED_KEYS = ("name", "label", "weight")


def full_score(spec: Spec) -> float:
    """The score of an item every verifier of `spec` passes: the summed weights of a labelled spec, else 1.

    >>> full_score([{"name": "math", "label": "4"}, {"name": "ifeval", "label": "{}"}])
    2.0
    >>> full_score({"math": 3, "format": 1})
    1.0
    """
    return sum(weight for _, weight, _ in labelled_parts(spec)) or 1.0


def labelled_parts(spec: Spec) -> tuple[tuple[str, float, Any], ...]:
    """A spec of entries with their own labels as ((name, weight, label), ...); () for any other spec.

    Such a spec is a list of `{"name": ..., "label": ..., "weight": ...}`
    mappings: the shape of an open-instruct row with several verifiers, each
    paired with its own ground truth. Mixing them with plain names raises.

    >>> labelled_parts([{"name": "math", "label": "4"}])
    (('math', 1.0, '4'),)
    >>> labelled_parts("math")
    ()
    """
    if not isinstance(spec, (list, tuple)) or not any(isinstance(entry, Mapping) for entry in spec):
        return ()
    parts = []
    for i, entry in enumerate(spec):
        if not isinstance(entry, Mapping):
            raise ValueError(f"verifier[{i}]: entries with their own labels cannot be mixed with names or pairs, got {entry!r}")
        extra = sorted(set(entry) - set(LABELLED_KEYS))
        if extra:
            raise ValueError(f"verifier[{i}]: unknown key(s) {', '.join(map(repr, extra))} (expected {', '.join(LABELLED_KEYS)})")
        name = entry.get("name")
        if not isinstance(name, str):
            raise ValueError(f"verifier[{i}].name: expected a verifier name, got {name!r}")
        weight = entry.get("weight")
        parts.append((name, 1.0 if weight is None else float(weight), entry.get("label")))
    return tuple(parts)


def answer_text(prediction: str) -> str:
    """The part of a prediction that is scored: the text after the last `</think>`.

    A prediction with an unclosed `<think>` never reached its answer, so its
    answer is empty; one without think tags is all answer.

    >>> answer_text("<think>2+2 is 4</think>The answer is 4.")
    'The answer is 4.'
    >>> answer_text("<think>still thinking")
    ''
    """
    if "</think>" in prediction:
        return prediction.rsplit("</think>", 1)[1]
    if "<think>" in prediction:
        return ""
    return prediction


def evaluate(verifier: Spec, prediction: Any, label: Any = None, *, options: Optional[Mapping[str, Mapping]] = None, **context: Any) -> Result:
    """Score one item and say why; raises only for unknown verifier names.

    `verifier` may combine several verifiers with weights (see `parse_spec`);
    the score is then their weighted mean, in [0, 1], all of them checking
    the one `label`. A spec of entries with their own labels
    (`labelled_parts`; `label` is then unused) scores the SUM of weight x
    score, as open-instruct sums the rewards of a row's verifiers (each
    times its constant `verification_reward`, not applied here): a row of k
    verifiers of weight 1 scores in [0, k]. `options` maps verifier name ->
    default context (the recipe's `verifiers.options`); keys given in
    `context` win.
    """
    parts = parse_spec(verifier)
    if not isinstance(prediction, str):
        return _unscored(parts[0][0], f"prediction is {type(prediction).__name__}, not text")
    labelled = labelled_parts(verifier)
    if labelled:
        results = [(n, w, _run_one(n, prediction, lab, _context_for(n, options, context))) for n, w, lab in labelled]
        reasons = "; ".join(f"{n}: {r.reason}" for n, _, r in results if r.reason)
        return Result(sum(w * r.score for _, w, r in results), reasons, all(r.scored for _, _, r in results))
    if len(parts) == 1:
        name = parts[0][0]
        return _run_one(name, prediction, label, _context_for(name, options, context))
    total = sum(w for _, w in parts)
    results = [(w, _run_one(n, prediction, label, _context_for(n, options, context))) for n, w in parts]
    score = sum(w * r.score for w, r in results) / total
    reasons = "; ".join(f"{n}: {r.reason}" for (n, _), (_, r) in zip(parts, results) if r.reason)
    return Result(min(1.0, max(0.0, score)), reasons, all(r.scored for _, r in results))


def score(verifier: Spec, prediction: Any, label: Any = None, **context: Any) -> float:
    """Score one item in this process: a float in [0, 1] (see `evaluate`).

    >>> score("gsm8k", "so she pays $1,250 in total", "1250")
    1.0
    """
    return evaluate(verifier, prediction, label, **context).score


def _context_for(name: str, options: Optional[Mapping[str, Mapping]], context: Mapping[str, Any]) -> dict[str, Any]:
    if not options or name not in options:
        return dict(context)
    return {**options[name], **context}


def _run_one(name: str, prediction: str, label: Any, context: dict[str, Any]) -> Result:
    fn = get(name)
    text = prediction if name in _RAW else answer_text(prediction)
    try:
        out = fn(text, label, **context)
    except (Exception, SystemExit) as err:  # a verifier bug or a malformed label scores 0, visibly
        return _unscored(name, f"error: {type(err).__name__}: {_short(str(err))}")
    return normalize(name, out)


def normalize(name: str, out: Any) -> Result:
    """A verifier's return value as a Result with a score in [0, 1]."""
    reason = ""
    if isinstance(out, Result):
        if out.score is None or not out.scored:
            return _unscored(name, out.reason or "cannot score")
        out, reason = out.score, out.reason
    if out is None:
        return _unscored(name, "cannot score")
    try:
        value = float(out)
    except (TypeError, ValueError):
        return _unscored(name, f"error: returned {type(out).__name__}, not a number")
    if math.isnan(value):
        return _unscored(name, "error: returned NaN")
    return Result(min(1.0, max(0.0, value)), reason)


def _unscored(name: str, reason: str) -> Result:
    record_unscored(name, reason)
    return Result(0.0, reason, scored=False)


def record_unscored(name: str, reason: str) -> None:
    kind = reason.split(":", 1)[0]
    with _LOCK:
        _UNSCORED[f"{name}: {kind}"] += 1


def unscored_counts(reset: bool = False) -> dict[str, int]:
    """How many items this process could not score, by "verifier: kind of reason"."""
    with _LOCK:
        counts = dict(_UNSCORED)
        if reset:
            _UNSCORED.clear()
    return counts


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_json(label: Any, what: str = "label") -> Any:
    """A label that may arrive as a JSON string (datasets often store it so)."""
    if isinstance(label, str):
        try:
            return json.loads(label)
        except json.JSONDecodeError as err:
            raise ValueError(f"{what} is a string but not JSON: {err}") from None
    return label
