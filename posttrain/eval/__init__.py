"""Held-out evaluation of checkpoints and of the RLVR policy in the loop."""
