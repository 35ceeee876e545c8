"""One small registry per concept (datasets, triggers, models, regularizers, optimizers).

Adding a thing is one decorated class or function in its module:

    @TRIGGERS.register("bs")
    class BlackSquare(Trigger): ...

and ``TRIGGERS.create("bs", alpha=1.0)`` builds it. Every registry checks
names and parameters the same way, with one wording: an unknown name lists
what is registered, and an unknown parameter lists what the entry accepts
(its signature; an entry whose signature takes ``**kwargs`` says what it
accepts with a ``parameter_names()`` class method, or accepts anything).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, also: str | None = None):
        self.kind = kind
        self.also = also  # what an unknown name could be besides the registered ones
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
            also = f", or {self.also}" if self.also else ""
            raise ValueError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(sorted(self._entries))}{also}"
            ) from None

    def parameters(self, name: str) -> list[str] | None:
        """The keyword parameters entry ``name`` accepts, or ``None`` when it accepts any."""
        entry = self.get(name)
        declared = getattr(entry, "parameter_names", None)
        if callable(declared):
            return list(declared())
        target = entry.__init__ if inspect.isclass(entry) else entry  # type: ignore[misc]
        accepted = []
        for parameter in inspect.signature(target).parameters.values():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                return None
            if parameter.name != "self" and parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                accepted.append(parameter.name)
        return accepted

    def check_params(
        self, name: str, params: Iterable[str], exclude: Iterable[str] = (), extra: Iterable[str] = ()
    ) -> None:
        """A ``ValueError`` naming the first of ``params`` entry ``name`` does not accept, and what it accepts
        (``exclude``: parameters the caller supplies itself, left out of what is allowed; ``extra``: ones
        the caller takes besides the entry's, added to it, e.g. a fitted trigger's fit parameters)."""
        accepted = self.parameters(name)
        if accepted is None:
            return
        unknown = [key for key in params if key not in accepted]
        if unknown:
            allowed = [key for key in accepted if key not in set(exclude)] + list(extra)
            raise ValueError(
                f"{self.kind} {name!r} has no parameter {unknown[0]!r}; allowed: {', '.join(allowed) or '(none)'}"
            )

    def create(self, name: str, /, **params: Any) -> Any:
        """Build entry ``name`` from keyword ``params``, checked against what it accepts first."""
        self.check_params(name, params)
        return self.get(name)(**params)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def in_order(self) -> list[str]:
        """The registered names in the order they were registered (a module's order: the paper's, for triggers)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def params_error_key(exc: Exception, params: Mapping[str, Any]) -> str | None:
    """The parameter a builder's ``TypeError``/``ValueError`` is about, when its message names one of ``params``."""
    text = str(exc)
    return next((key for key in params if f"'{key}'" in text or f"{key}=" in text or text.startswith(f"{key} ")), None)
