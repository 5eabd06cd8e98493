"""posttrain: staged post-training (SFT -> DPO -> RLVR) of Olmo-3-style models."""

__version__ = "0.1.0"
