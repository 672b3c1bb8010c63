"""A named registry of builders, filled by decorator (backbone families, sim suites, ...)."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """``@reg.register("name")`` adds a builder; ``reg.get("name")`` returns it.

    kind: what the entries are (used in error messages, e.g. "backbone family").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._entries and self._entries[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> F:
        """The builder for ``name``; unknown names raise ValueError listing the known ones."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {self.names()}")
        return self._entries[name]
