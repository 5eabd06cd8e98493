"""Verifiable reward functions."""
