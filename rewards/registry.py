"""The one dispatch helper: names -> objects, with loud failures.

A conflicting duplicate raises; an unknown name lists the valid ones and the
closest match. Every pluggable piece (stages, losses, engines, verifiers,
stage schemas) is looked up through a `Registry`, never through if/elif.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a name is not registered; the message lists valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """A named table of objects of one kind (one signature per registry)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, override: bool = False):
        """Register `obj` under `name`; usable as a decorator when `obj` is None.

        Registering the same object twice is a no-op (modules may be imported
        twice, e.g. in worker processes); a different object under a taken name
        raises unless `override=True`.
        """

        def add(item: T) -> T:
            existing = self._items.get(name)
            if existing is not None and not override and not _same_definition(existing, item):
                raise ValueError(f"{self.kind} {name!r} is already registered to {existing!r}")
            self._items[name] = item
            return item

        if obj is None:
            return add
        return add(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), list(self._items), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(sorted(self._items)) or '(none)'}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)


def _same_definition(a: object, b: object) -> bool:
    """True for one object, or one definition imported twice (same module and name)."""
    key = lambda o: (getattr(o, "__module__", None), getattr(o, "__qualname__", id(o)))
    return a is b or key(a) == key(b)


def registered(registry: Registry[T], name: str) -> Callable[[T], T]:
    """Decorator form: `@registered(LOSSES, "dpo")`."""
    return registry.register(name)
