"""One small registry per concept (datasets, triggers, models, regularizers, optimizers).

Adding a thing is one decorated class or function in its module:

    @TRIGGERS.register("bs")
    class BlackSquare(Trigger): ...

and ``TRIGGERS.create("bs", alpha=1.0)`` builds it. Unknown names are a
clear error that lists what is registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            # Bad input, not a bug: ValueError, naming the value and what is allowed.
            raise ValueError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(sorted(self._entries))}"
            ) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
