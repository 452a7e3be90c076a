"""The options of a config group by name: one registry type for every group (model, norm, data, optim, schedule).

    MODELS = Options("model")
    MODELS.register("cnn", spec)       # in the option's own file or its group's catalog: the name is stated once
    MODELS["cnn"]                       # the entry, or a ConfigError that lists the options

Entries keep their registration order, which lists, help and reports follow. A name registered twice from two
places is refused, naming both, unless `replace=True` asks for it (a plugin replacing a built-in on purpose).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from normbench.base.errors import ConfigError

T = TypeVar("T")


class Options(Mapping[str, T], Generic[T]):
    def __init__(self, group: str, error: type[ConfigError] = ConfigError) -> None:
        self.group = group
        self.error = error  # the error an unknown name raises (NormError for norms)
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str, entry: T, *, origin: str = "", replace: bool = False) -> T:
        """Add `entry` under `name`; `origin` says where it was written, for the message a clash gives."""
        first = self._origins.get(name)
        if name in self._entries and not replace and first != origin:
            raise self.error(
                f"The {self.group} '{name}' in {origin} is already registered by {first}. Give yours another name, "
                f"or register it with replace=True to replace that {self.group} on purpose (every run with "
                f"{self.group}={name} then uses yours)."
            )
        self._entries[name] = entry
        self._origins[name] = origin
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (a test's, or a plugin's that is unloaded)."""
        self._entries.pop(name, None)
        self._origins.pop(name, None)

    __delitem__ = unregister

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise self.error(
                f"Unknown {self.group} '{name}'. The {self.group} options: {', '.join(self._entries)} "
                "(`normbench list` describes each)."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def origin(self, name: str) -> str:
        return self._origins.get(name, "")


def origin_of(thing: Callable[..., Any] | type) -> str:
    """Where a function or class was written: `module (file:line)` (a class: `module.Class`)."""
    if isinstance(thing, type):
        return f"{thing.__module__}.{thing.__qualname__}"
    code = getattr(thing, "__code__", None)
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return f"{thing.__module__}{where}"
