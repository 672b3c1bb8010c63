"""A named registry, filled by decorator: heads, backbone families, sim suites, dataset configs.

Every registry fails the same way: an unknown name raises ``ValueError("unknown <kind> 'x'; known
<kinds>: [...]")``. Entries register where they are defined (``@reg.register("name")``); a
registry finds the modules that define them in one of two ways, so no import list is kept by hand:

* ``package="pkg.sub"``: on the first lookup, every module of that package is imported (cheap
  modules only: heads, backbone families).
* ``lazy={"name": "pkg.module"}``: the module is imported only when ``name`` is looked up (heavy
  modules, e.g. a suite that loads MuJoCo).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, Mapping, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """``@reg.register("name")`` adds an entry (a class, a builder or a value); ``reg.get("name")`` returns it.

    kind / plural: what the entries are, for error messages ("head" / "heads").
    package / lazy: where the defining modules live (see the module docstring).
    """

    def __init__(self, kind: str, plural: str | None = None, *, package: str | None = None,
                 lazy: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, T] = {}
        self._package = package
        self._lazy = dict(lazy or {})

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        """Decorator adding ``entry`` under ``name``; a second, different entry raises ValueError
        unless ``overwrite``."""

        def deco(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. an entry a test registered); unknown names raise ValueError."""
        if name not in self._entries:
            raise ValueError(f"{self.kind} {name!r} is not registered")
        del self._entries[name]

    def _discover(self) -> None:
        name, self._package = self._package, None  # once (and no recursion from the imports)
        if name is None:
            return
        try:
            pkg = importlib.import_module(name)
            for mod in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"{name}.{mod.name}")
        except BaseException:
            self._package = name  # retried on the next lookup
            raise

    def names(self) -> list[str]:
        """Sorted names of every entry, including lazy ones not imported yet."""
        self._discover()
        return sorted(set(self._entries) | set(self._lazy))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def get(self, name: str) -> T:
        """The entry for ``name`` (importing its module if lazy); unknown names raise ValueError
        listing the known ones."""
        self._discover()
        if name not in self._entries and name in self._lazy:
            importlib.import_module(self._lazy[name])
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.plural}: {self.names()}")
        return self._entries[name]
