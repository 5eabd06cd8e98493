"""Build the tiny default into a directory, atomically; tell whether one is built.

Layout (a contract: stages, recipes and outside tests read it):

    DIR/base/                      Hugging Face checkpoint: weights, config.json,
                                   generation_config.json (eos <|im_end|>),
                                   tokenizer files with the chat template
    DIR/data/NAME/train.jsonl      NAME in sft_think, sft_instruct, dpo_think,
    DIR/data/NAME/heldout.jsonl    dpo_instruct, rlvr
    DIR/data/rlvr/dev.jsonl        RLVR prompts to tune on; heldout.jsonl is what is reported
    DIR/build.json                 seed, sizes, hashes, timings, pretraining stats

Order of work: toy data (from the seed), tokenizer (trained on the toy text),
model (initialised from the seed), pretraining (a fixed number of steps),
then save. Everything is written into a temporary sibling directory that is
renamed onto DIR at the end, with build.json last, so a killed build never
looks built. Rebuilding replaces base/, data/ and build.json only: whatever
else lives in DIR (the tiny recipes write stage runs there) stays.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from posttrain.tiny.datasets import DATASETS, DataConfig

FORMAT = 3  # bump when the layout or the generators change meaning; older builds then rebuild
SPLITS = ("train", "heldout")
EXTRA_SPLITS = {"rlvr": ("dev",)}
BUILD_FILE = "build.json"


def data_path(out_dir: str | os.PathLike, name: str, split: str) -> Path:
    return Path(out_dir) / "data" / name / f"{split}.jsonl"


def is_built(out_dir: str | os.PathLike) -> bool:
    """True when DIR holds a complete build of the current format."""
    out = Path(out_dir)
    try:
        info = json.loads((out / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return False
    files = [out / "base" / "config.json", out / "base" / "tokenizer.json"]
    files += [data_path(out, name, split) for name in DATASETS for split in SPLITS + EXTRA_SPLITS.get(name, ())]
    return info.get("format") == FORMAT and all(f.is_file() for f in files)


def build_key(seed: int = 0) -> str:
    """What a build depends on, as 16 hex digits: this package's code and the chat template it renders with,
    the seed, the format, and the versions of the libraries that compute it. A cache of builds keyed by it
    (the test suite's) never serves a stale one."""
    from importlib.metadata import version

    from posttrain.data import chat

    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")) + [Path(chat.__file__)]:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    versions = {name: version(name) for name in ("torch", "transformers", "tokenizers")}
    digest.update(json.dumps({"seed": seed, "format": FORMAT, "versions": versions}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def read_build_info(out_dir: str | os.PathLike) -> dict:
    return json.loads((Path(out_dir) / BUILD_FILE).read_text())


def build(
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    pretrain_steps: int | None = None,
    data: DataConfig | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Build the tiny default into `out_dir` (replacing a previous build there); returns the path.

    `pretrain_steps` overrides the default number of pretraining steps (tests
    use a handful); `data` overrides the toy data sizes and knobs.
    """
    out = Path(out_dir).resolve()
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-{os.getpid()}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the build is an ordinary directory
    try:
        info = _build_into(tmp, seed, pretrain_steps, data or DataConfig(), log)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"tiny default written to {out} ({info['timings']['total_s']:.0f} s)")
    return out


def _check_replaceable(out: Path) -> None:
    """Refuse to overwrite base/ or data/ that no tiny build wrote (DIR without build.json)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    entries = {p.name for p in out.iterdir()}
    if BUILD_FILE not in entries and entries & {"base", "data"}:
        raise FileExistsError(
            f"{out} has base/ or data/ but no {BUILD_FILE}, so no tiny build wrote them; "
            "remove them or choose another directory"
        )


def _remove_dead_builds(out: Path) -> None:
    """Delete temporary directories left by builds of `out` whose process is gone (killed builds)."""
    for tmp in out.parent.glob(f".{out.name}.building-*"):
        pid = tmp.name.rsplit(".building-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace(tmp: Path, out: Path) -> None:
    """Install the finished build in `tmp` as `out`.

    A new `out` is one rename. An existing one keeps its other entries (the
    tiny recipes write their stage runs under it): build.json goes first, so
    from then on `out` does not look built, base/ and data/ are swapped in, and
    build.json is renamed in last, which is the moment the new build exists.
    """
    if not out.exists():
        tmp.rename(out)
        return
    (out / BUILD_FILE).unlink(missing_ok=True)
    old = tmp / "replaced"
    old.mkdir()
    for name in ("base", "data"):
        if (out / name).exists():
            (out / name).rename(old / name)
        (tmp / name).rename(out / name)
    (tmp / BUILD_FILE).rename(out / BUILD_FILE)
    shutil.rmtree(tmp, ignore_errors=True)


def _build_into(root: Path, seed: int, pretrain_steps: int | None, data_cfg: DataConfig, log) -> dict:
    # heavy imports here, so that `is_built` and the CLI's --help stay light
    from posttrain.tiny import datasets as D
    from posttrain.tiny.model import generation_config
    from posttrain.tiny.tokenizer import train_tokenizer

    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    log(f"[1/4] toy data (seed {seed})")
    rng = random.Random(seed)
    pools = D.make_pools(data_cfg, rng)
    datasets = D.build_datasets(pools, data_cfg, rng)
    documents = D.pretraining_documents(pools, data_cfg, rng)
    data_info = _write_datasets(root, datasets, log)
    timings["data_s"] = time.perf_counter() - t0

    log("[2/4] tokenizer: byte-level BPE on the toy text")
    t = time.perf_counter()
    tokenizer = train_tokenizer(_tokenizer_corpus(documents, datasets))
    timings["tokenizer_s"] = time.perf_counter() - t

    log("[3/4] model and pretraining")
    t = time.perf_counter()
    model, pt_cfg, pt_stats = _pretrained_model(tokenizer, documents, seed, pretrain_steps, log)
    timings["pretrain_s"] = time.perf_counter() - t

    log("[4/4] saving")
    t = time.perf_counter()
    base = root / "base"
    model.generation_config = generation_config(tokenizer.eos_token_id, tokenizer.pad_token_id)
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    _portable_tokenizer_config(base)
    timings["save_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    info = {
        "format": FORMAT,
        "seed": seed,
        "model": _model_info(model, tokenizer),
        "hashes": {
            "weights_sha256": weights_hash(model),
            "tokenizer_sha256": _file_hash(base / "tokenizer.json"),
            "data_sha256": {k: v["sha256"] for k, v in data_info.items()},
        },
        "data": {k: v["rows"] for k, v in data_info.items()},
        "data_config": data_cfg.to_dict(),
        "pretrain": {**pt_stats, "config": pt_cfg.to_dict()},
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    (root / BUILD_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def _pretrained_model(tokenizer, documents: list[str], seed: int, steps: int | None, log):
    """A fresh tiny Olmo 3 (initialised from `seed`), pretrained on `documents`."""
    import torch
    from transformers import Olmo3ForCausalLM

    from posttrain.tiny.model import tiny_config
    from posttrain.tiny.pretrain import PretrainConfig, pack, pretrain

    torch.manual_seed(seed)
    model = Olmo3ForCausalLM(tiny_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id))
    summary = _model_info(model, tokenizer)
    log(f"  Olmo3ForCausalLM: {summary['parameters']:,} parameters, vocab {summary['vocab_size']}, "
        f"hidden {summary['hidden_size']}, {summary['layers']} layers, {summary['heads']} heads")
    cfg = PretrainConfig() if steps is None else PretrainConfig(steps=steps)
    separator = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    blocks = pack(tokenizer(documents, add_special_tokens=False)["input_ids"], separator, cfg.block)
    return model, cfg, pretrain(model, blocks, cfg, seed, log)


def _model_info(model, tokenizer) -> dict:
    config = model.config
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": config.vocab_size,
        "tokenizer_size": len(tokenizer),
        "hidden_size": config.hidden_size,
        "layers": config.num_hidden_layers,
        "heads": config.num_attention_heads,
        "head_dim": config.hidden_size // config.num_attention_heads,
        "layer_types": list(config.layer_types),
    }


def _write_datasets(root: Path, datasets: dict, log) -> dict:
    info = {}
    for name, splits in datasets.items():
        for split, rows in splits.items():
            path = data_path(root, name, split)
            path.parent.mkdir(parents=True, exist_ok=True)
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            path.write_text(text, encoding="utf-8")
            info[f"{name}/{split}"] = {"rows": len(rows), "sha256": hashlib.sha256(text.encode()).hexdigest()}
        log(f"  data/{name}: " + ", ".join(f"{s} {len(r)}" for s, r in splits.items()))
    return info


def _tokenizer_corpus(documents: list[str], datasets: dict) -> list[str]:
    """The pretraining text plus the SFT chats as plain text (role names included)."""
    chats = [
        f"{m['role']}\n{m['content']}"
        for name in ("sft_think", "sft_instruct")
        for row in datasets[name]["train"]
        for m in row["messages"]
    ]
    return documents + chats


def _portable_tokenizer_config(base: Path) -> None:
    """Name the tokenizer class PreTrainedTokenizerFast, which every transformers version (and vLLM) loads."""
    path = base / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def weights_hash(model) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
