"""The shared learner of every stage: model + optimizer + DeepSpeed/torch backend (see core.py)."""

from posttrain.learner.core import Learner, LearnerSpec

__all__ = ["Learner", "LearnerSpec"]
