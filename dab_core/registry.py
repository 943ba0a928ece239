"""A tiny name -> object registry, one per kind of thing (hard functions, experiment families).

Names, not import paths, are what configs and sweep specs hold: a spec stays a plain,
serialisable document and can only name what the installed code registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that the registry does not hold; the message lists what it does hold.

    A `KeyError` (a lookup failed) and a `ValueError` (the value given is wrong): a pydantic
    validator may let it through, and the ValidationError then carries it as ``ctx["error"]``.

    Attributes:
        name: the name asked for.
        kind: the registry's kind (``"hard function"``).
        known: the names it holds, sorted.

    Callers that locate the mistake (a sweep spec's field path) read these, not the message.
    """

    def __init__(
        self, message: str, *, name: object = None, kind: str = "", known: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.name = name
        self.kind = kind
        self.known = tuple(known)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only attributes survive pickling
        return (_unknown_name_error, (self.args[0], self.name, self.kind, self.known))


def _unknown_name_error(message: str, name: object, kind: str, known: Sequence[str]) -> UnknownNameError:
    return UnknownNameError(message, name=name, kind=kind, known=known)


class Registry(Generic[T]):
    """Maps names to objects of one kind.

    Duplicate names fail loudly; an unknown name raises `UnknownNameError` naming this
    registry and listing the known names. Installed plugins can add entries through the
    Python entry-point group `entry_point_group`: each entry point is imported (which is
    expected to register through the decorator) the first time the registry is queried.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._plugins_loaded = entry_point_group is None

    def add(self, name: str, obj: T) -> T:
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""

        def deco(obj: T) -> T:
            return self.add(name, obj)

        return deco

    def remove(self, name: str) -> None:
        """Forget `name` (for tests and interactive sessions)."""
        self._load_plugins()
        if name not in self._items:
            raise self._unknown(name)
        del self._items[name]

    def lookup(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self._unknown(name) from None

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _unknown(self, name: object) -> UnknownNameError:
        known = sorted(self._items)
        return UnknownNameError(
            f"unknown {self.kind} {name!r}; known: {', '.join(known) or '(none)'}",
            name=name,
            kind=self.kind,
            known=known,
        )

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        assert self.entry_point_group is not None
        for ep in entry_points(group=self.entry_point_group):
            ep.load()  # registering is the side effect of importing the plugin module
