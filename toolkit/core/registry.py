"""Registries: the extension points of metcli (classifiers, segmentation backends,
network architectures) are named entries in one, in registration order.

A registry keeps its entries by their ``name`` attribute, refuses a second entry of
the same name, and says which names it knows when asked for another. The command
line reads :meth:`Registry.names` and :meth:`Registry.help` when an option is
parsed or shown, so an entry registered before the command runs is offered too.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Generic, Iterator, Mapping, TypeVar

from metcli.core.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind.

    Args:
        what: what an entry is, for messages ("segmentation backend").
        unknown: the message for a name that is not registered, given the name and
            the known names joined by ", " (e.g. ``--backend 'x' is not one of ...``).
        check: called with a new entry before it is added; raises
            :class:`UsageError` for an entry that is not valid.
    """

    def __init__(
        self,
        what: str,
        *,
        unknown: Callable[[str, str], str],
        check: Callable[[T], None] | None = None,
    ):
        self.what = what
        self._unknown = unknown
        self._check = check
        self._entries: dict[str, T] = {}
        #: A read-only view of the entries by name.
        self.entries: Mapping[str, T] = MappingProxyType(self._entries)

    def register(self, entry: T) -> T:
        """Add ``entry`` after the ones already there; its name must be new."""
        if self._check is not None:
            self._check(entry)
        name = entry.name
        if name in self._entries:
            raise UsageError(
                f"a {self.what} named {name!r} is already registered",
                fix="choose another name, or unregister the other one first",
            )
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove the entry ``name``; returns it."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> T:
        """The entry ``name``; an unknown name is a :class:`UsageError` listing the known."""
        try:
            return self._entries[name]
        except KeyError:
            raise UsageError(
                self._unknown(name, ", ".join(self._entries)),
                fix="choose one of the names listed",
            ) from None

    def names(self) -> tuple[str, ...]:
        """The names, in registration order."""
        return tuple(self._entries)

    def help(self) -> str:
        """One sentence per entry, ``name: description``, for a command's help."""
        return " ".join(f"{e.name}: {e.description.rstrip('.')}." for e in self._entries.values())

    def __iter__(self) -> Iterator[T]:
        return iter(tuple(self._entries.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
