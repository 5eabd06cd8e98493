"""Random-weight Olmo 3 checkpoints for engine tests and benchmarks (built locally, nothing downloaded).

The tokenizer is word-level: special tokens first (<|endoftext|>, <|im_start|>,
<|im_end|>, <|pad|>), then words `w0`, `w1`, ... up to the vocabulary size, so
any vocabulary size is exact and every token id decodes. Heads are 64 wide,
the only head size vLLM's CPU attention takes.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
HEAD_DIM = 64


def word_tokenizer(vocab_size: int):
    """A `PreTrainedTokenizerFast` with exactly `vocab_size` tokens; eos <|im_end|>, pad <|pad|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIAL_TOKENS + [f"w{i}" for i in range(vocab_size - len(SPECIAL_TOKENS))]
    core = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"],
    )


def build_checkpoint(
    out: str | Path,
    *,
    vocab_size: int = 256,
    hidden_size: int = 128,
    num_layers: int = 2,
    intermediate_size: int | None = None,
    seed: int = 0,
    logit_scale: float = 1.0,
) -> Path:
    """Write a random Olmo3ForCausalLM (float32) and its tokenizer to `out`; returns `out`.

    `logit_scale` multiplies the output projection: random init gives nearly
    uniform next-token distributions, and a scale of ~10-30 makes them peaked,
    as a trained model's are (log-prob tests then see a wide range of values).
    """
    import torch
    from transformers import Olmo3Config, Olmo3ForCausalLM

    if hidden_size % HEAD_DIM:
        raise ValueError(f"hidden_size must be a multiple of {HEAD_DIM} (vLLM-CPU head size), got {hidden_size}")
    out = Path(out)
    tokenizer = word_tokenizer(vocab_size)
    tokenizer.save_pretrained(out)
    config = Olmo3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // HEAD_DIM,
        num_key_value_heads=hidden_size // HEAD_DIM,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Olmo3ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    model.save_pretrained(out)
    return out


def random_weights(model_dir: str | Path, seed: int, logit_scale: float = 1.0) -> dict:
    """A fresh random state dict for the architecture in `model_dir` (same names and shapes)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def reference_logprobs(model, prompt: list[int], tokens: list[int], temperature: float = 1.0, top_p: float = 1.0) -> list[float]:
    """The learner-side log-probs of `tokens` after `prompt`: one `transformers` forward pass.

    Same distribution as the engines report (`posttrain.rollout.base`):
    log_softmax of the tempered, top-p-filtered logits; temperature 0 means 1.
    """
    import torch

    from posttrain.rollout.hf_engine import top_p_filter

    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1].float()  # (T, V)
    if temperature > 0:
        logits = top_p_filter(logits / temperature, top_p)
    logprobs = logits.log_softmax(dim=-1)
    return logprobs.gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1).tolist()


class EngineProcess:
    """An engine built and driven in a spawned child process (same methods as `Engine`).

    vLLM's Transformers backend, which serves Olmo 3, rewrites the
    `transformers` Olmo3Model class in whatever process builds it; keeping the
    engine in a child process leaves the caller's `transformers` models intact
    (tests compare against them, benchmarks time engines side by side).
    """

    def __init__(self, model_path: str | Path, options, *, seed: int = 0, daemon: bool = True):
        """`daemon`: the child ends when this process does; False for an engine that starts processes of its
        own (vLLM with V1 multiprocessing, `weight_sync: broadcast`), which a daemonic process may not."""
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve_engine, args=(child, str(model_path), options.model_dump(), seed), daemon=daemon
        )
        self._process.start()
        self.build_seconds = self._call("__ready__")

    def _call(self, method: str, *args, **kwargs):
        if method != "__ready__":
            self._conn.send((method, args, kwargs))
        status, value = self._conn.recv()
        if status == "error":
            raise RuntimeError(f"engine process: {method} failed:\n{value}")
        return value

    @property
    def policy_version(self) -> int:
        return self._call("__version__")

    def generate(self, prompts, n, **sampling):
        return self._call("generate", prompts, n, **sampling)

    def load_weights(self, named_tensors, version: int) -> float:
        return self._call("load_weights", list(named_tensors), version)

    def join_weight_group(self, *args) -> None:
        return self._call("join_weight_group", *args)

    def receive_weights(self, version: int) -> float:
        return self._call("receive_weights", version)

    def leave_weight_group(self) -> None:
        return self._call("leave_weight_group")

    def sleep(self, level: int) -> dict:
        return self._call("sleep", level)

    def wake(self, tags: list[str] | None = None) -> dict:
        return self._call("wake", tags)

    @property
    def pid(self) -> int:
        """The child process; vLLM's engine-core and worker processes, when it has them, are its descendants."""
        return self._process.pid

    def close(self) -> None:
        """Close the engine (vLLM's engine-core and worker processes, when it has them, end with it), then
        end the child process."""
        if self._process.is_alive():
            self._conn.send(("close", (), {}))
            self._conn.poll(60)
        self._process.terminate()
        self._process.join(timeout=30)


def _serve_engine(conn, model_path: str, options: dict, seed: int) -> None:
    import time
    import traceback

    from posttrain.config import RolloutSection
    from posttrain.rollout import build_engine

    try:
        start = time.perf_counter()
        engine = build_engine(model_path, RolloutSection.model_validate(options), seed=seed)
        conn.send(("ok", time.perf_counter() - start))
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        method, args, kwargs = conn.recv()
        try:
            if method == "__version__":
                result = engine.policy_version
            else:
                result = getattr(engine, method)(*args, **kwargs)
            conn.send(("ok", result))
        except Exception:
            conn.send(("error", traceback.format_exc()))
