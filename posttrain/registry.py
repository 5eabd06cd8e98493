"""The one dispatch helper (names -> objects, with loud failures), shared with `rewards`.

It lives in `rewards/registry.py` because `rewards` stands alone (it imports
nothing from `posttrain`); `posttrain` is the layer above and re-exports it.
"""

from rewards.registry import Registry, UnknownNameError, registered

__all__ = ["Registry", "UnknownNameError", "registered"]
