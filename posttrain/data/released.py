"""Row adapters: the released Olmo 3 datasets' rows -> this project's row shapes, as they are.

An adapter is a function row -> row, handed to `read_source` / `mix` /
`mix_section` as `adapt=`; it runs after `columns` renames and before the
stage's row validator, and raises `RowProblem("field: problem")` for a row it
cannot read (the source names the file and row). Rows already in this
project's shapes (the tiny data) come back unchanged, as the same object.

RLVR (`rlvr_adapter(aliases, verifiers)`), for Dolci-Think-RL-7B,
Dolci-Instruct-RL and the 32B sets, following open-instruct
(`dataset_transformation.py`, `ground_truth_utils.py`):
- the prompt is `messages` with a trailing assistant turn dropped, or else
  `prompt` (a string is one user turn; a message list is taken as is);
- the verifier is `verifier`, or else `dataset`: a name or a list of names,
  one per `ground_truth` entry (a single ground truth pairs with a single
  name). Names go through `rewards.aliases.resolve` (open-instruct's names,
  case-insensitively, then the recipe's `verifiers.aliases`, which win);
- one name keeps the plain shape (`verifier: NAME`, `ground_truth: LABEL`);
  several become a spec of `{"name", "label", "weight": 1}` entries, each
  verifier with its own ground truth, which scores the SUM of the verifiers'
  scores as open-instruct does (`rewards.evaluate`; open-instruct also scales
  each by a constant `verification_reward`, 10 by default, left out here);
- `code` and `code_stdio` labels are decoded here once (`rewards.decode`, no
  code runs) so an undecodable one fails the row at load, not at scoring; the
  row keeps its label as written;
- every other column (`dataset_source`, `id`, `solution`, `passrate`, ...)
  passes through.

DPO (`dpo_adapter`), for Dolci-Instruct-DPO (`chosen`/`rejected` whole
conversations: unchanged) and Dolci-Think-DPO-7B (`prompt` plus two
answers): with a `prompt` (a string or a message list), a side that is a
string (the assistant's answer) or a list of assistant turns follows the
prompt turns; a side that holds other turns is already a whole conversation
and is kept (its own prompt turns are what DPO trains on; `dpo_pair` then
checks that the sides share them).

SFT needs no adapter: the released SFT rows are `messages` conversations
already; how their tool turns render is `posttrain.data.chat`'s business.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, Optional

from posttrain.data.sources import RowAdapter, RowProblem
from posttrain.registry import Registry
from rewards.aliases import ALIASES, resolve
from rewards.code import parse_tests
from rewards.core import labelled_parts, spec_parts

# verifier -> a check of its label that raises ValueError (labels that are costly to find wrong at scoring time)
LABEL_CHECKS: dict[str, Callable[[Any], Any]] = {
    "code": lambda label: parse_tests(label, "code"),
    "code_stdio": lambda label: parse_tests(label, "code_stdio"),
}


# --------------------------------------------------------------------------
# RLVR


def rlvr_adapter(aliases: Mapping[str, str] = {}, verifiers: Optional[Collection[str]] = None) -> RowAdapter:
    """The RLVR row adapter for a recipe: `aliases` is its `verifiers.aliases`; with `verifiers` (the registered
    names) given, a name that resolves to none of them fails the row, listing what is known."""

    def adapt(row: dict) -> dict:
        messages = rlvr_prompt(row)
        own = row.get("verifier") is not None
        if own:
            verifier, ground_truth = rename_spec(row["verifier"], aliases), row.get("ground_truth")
        else:
            verifier, ground_truth = paired_spec(row, aliases)
        _check_known(_names(verifier), row, verifiers, aliases)
        _check_labels(verifier, ground_truth, indexed=not own and isinstance(row.get("ground_truth"), (list, tuple)))
        if messages is row.get("messages") and verifier == row.get("verifier") and ground_truth is row.get("ground_truth"):
            return row
        return {**row, "messages": messages, "verifier": verifier, "ground_truth": ground_truth}

    return adapt


def rlvr_prompt(row: dict) -> Any:
    """The prompt turns: `messages` less a trailing assistant turn, or `prompt` (a string -> one user turn)."""
    messages = row.get("messages")
    if messages:
        last = messages[-1]
        return list(messages[:-1]) if isinstance(last, Mapping) and last.get("role") == "assistant" else messages
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if prompt is None:
        raise RowProblem("messages: missing (and no prompt column)")
    return prompt  # a message list; the row validator checks it


def paired_spec(row: dict, aliases: Mapping[str, str]) -> tuple[Any, Any]:
    """(verifier, ground_truth) from open-instruct's `dataset` and `ground_truth` columns (module docstring)."""
    dataset, ground_truth = row.get("dataset"), row.get("ground_truth")
    if dataset is None:
        raise RowProblem("verifier: missing (and no dataset column naming one)")
    names = [dataset] if isinstance(dataset, str) else list(dataset)
    if not names or not all(isinstance(n, str) for n in names):
        raise RowProblem(f"dataset: expected a verifier name or a list of names, got {dataset!r}")
    if ground_truth is None:
        raise RowProblem("ground_truth: missing")
    truths = list(ground_truth) if isinstance(ground_truth, (list, tuple)) else [ground_truth]
    if len(truths) != len(names):
        raise RowProblem(f"ground_truth: {len(truths)} entries for {len(names)} verifiers in dataset")
    resolved = [resolve(n, aliases) for n in names]
    if len(resolved) == 1:
        return resolved[0], truths[0]
    return [{"name": n, "label": t, "weight": 1.0} for n, t in zip(resolved, truths)], ground_truth


def rename_spec(spec: Any, aliases: Mapping[str, str]) -> Any:
    """A `verifier` value with every name resolved, its shape kept (a name, names, pairs, a mapping, entries)."""
    if isinstance(spec, str):
        return resolve(spec, aliases)
    if isinstance(spec, Mapping):
        return {resolve(str(k), aliases): v for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return [_rename_entry(entry, aliases) for entry in spec]
    return spec  # malformed: the row validator says what is wrong


def _rename_entry(entry: Any, aliases: Mapping[str, str]) -> Any:
    if isinstance(entry, str):
        return resolve(entry, aliases)
    if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
        return {**entry, "name": resolve(entry["name"], aliases)}
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str):
        return [resolve(entry[0], aliases), entry[1]]
    return entry


def _names(spec: Any) -> list[str]:
    """The names in a spec, in order; [] for a malformed one (left to the row validator)."""
    try:
        return [name for name, _ in spec_parts(spec)]
    except (ValueError, TypeError):
        return []


def _check_known(names: list[str], row: dict, verifiers: Optional[Collection[str]], aliases: Mapping[str, str]) -> None:
    if verifiers is None:
        return
    for i, name in enumerate(names):
        if name in verifiers:
            continue
        field = "verifier" if row.get("verifier") is not None else "dataset"
        if field == "dataset" and not isinstance(row["dataset"], str):
            field = f"dataset[{i}]"
        known = sorted(set(verifiers) | set(ALIASES) | set(aliases))
        raise RowProblem(f"{field}: no verifier {name!r} (known: {', '.join(known)}; map others with verifiers.aliases)")


def _check_labels(verifier: Any, ground_truth: Any, indexed: bool) -> None:
    """Check the labels of verifiers in `LABEL_CHECKS` (`ground_truth[i]: cannot decode: ...`; `indexed`: the row's
    ground truth is open-instruct's list, one entry per verifier)."""
    entries = labelled_parts(verifier) if not isinstance(verifier, str) else ()
    pairs = [(name, label) for name, _, label in entries] if entries else [(verifier, ground_truth)]
    for i, (name, label) in enumerate(pairs):
        check = LABEL_CHECKS.get(name) if isinstance(name, str) else None
        if check is None:
            continue
        try:
            check(label)
        except ValueError as err:  # DecodeError included: "cannot decode: ..."
            field = f"ground_truth[{i}]" if indexed else "ground_truth"
            raise RowProblem(f"{field}: {err}") from None


# --------------------------------------------------------------------------
# DPO


SIDES = ("chosen", "rejected")


def dpo_adapter(row: dict) -> dict:
    """A preference row with `chosen`/`rejected` as whole conversations (module docstring)."""
    prompt = row.get("prompt")
    if prompt is None:
        return row  # whole conversations already (or a bad row, for the validator to name)
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not isinstance(turns, (list, tuple)) or not turns:
        raise RowProblem(f"prompt: expected text or a list of messages, got {_kind(prompt)}")
    out = dict(row)
    for side in SIDES:
        out[side] = _whole(turns, row.get(side), side)
    return out


def _whole(turns: list, value: Any, side: str) -> Any:
    if isinstance(value, str):
        return list(turns) + [{"role": "assistant", "content": value}]
    if not value or not isinstance(value, (list, tuple)):
        return value  # missing or malformed: `pair_problem` names it
    if all(isinstance(m, Mapping) and m.get("role") == "assistant" for m in value):
        return list(turns) + list(value)
    return value


def dpo_adapter_for(aliases: Mapping[str, str] = {}, verifiers: Optional[Collection[str]] = None) -> RowAdapter:
    """`dpo_adapter`, through the registry's one factory signature (DPO rows name no verifiers)."""
    return dpo_adapter


def _kind(value: Any) -> str:
    return "an empty list" if isinstance(value, (list, tuple)) else type(value).__name__


# stage -> factory (the recipe's verifiers.aliases, the registered verifier names or None) -> the stage's adapter
ADAPTERS: Registry[Callable[[Mapping[str, str], Optional[Collection[str]]], RowAdapter]] = Registry("row adapter")
ADAPTERS.register("rlvr", rlvr_adapter)
ADAPTERS.register("dpo", dpo_adapter_for)


def stage_adapter(stage: str, config) -> Optional[RowAdapter]:
    """The adapter a stage reads its recipe's rows through (None: SFT rows are conversations as released)."""
    if stage not in ADAPTERS:
        return None
    import rewards

    aliases = config.verifiers.aliases if hasattr(config, "verifiers") else {}
    return ADAPTERS.get(stage)(aliases, rewards.names())
