"""The embedded tiny default: a small Olmo-3 model, its tokenizer and toy data, built from code.

`build(out_dir, seed)` writes DIR/base/ (a Hugging Face checkpoint with the
tokenizer and chat template), DIR/data/NAME/{train,heldout}.jsonl and
DIR/build.json; `is_built(out_dir)` says whether a complete build is there;
`build_key(seed)` fingerprints what a build depends on (code, seed, versions).
Nothing is downloaded; torch and transformers load only when building.

Modules: tasks/constraints/lexicon (toy task generators), datasets (rows and
pretraining text), tokenizer (BPE + chat template), model (Olmo3Config),
pretrain (the short CPU run), builder (orchestration, atomic write).
"""

from posttrain.tiny.builder import build, build_key, is_built

__all__ = ["build", "build_key", "is_built"]
