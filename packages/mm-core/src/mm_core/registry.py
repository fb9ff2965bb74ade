"""Keyed registries that remember which plugin provided each entry."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from mm_core.errors import DuplicateRegistrationError, UnknownKeyError

T = TypeVar("T")


def _key_text(key: Hashable) -> str:
    return "/".join(map(str, key)) if isinstance(key, tuple) else str(key)


class Registry(Generic[T]):
    """Entries of one kind (model, converter, ...) keyed by ``item.key``.

    ``broken_plugins`` is a callable returning ``{plugin name: traceback}`` so that a failed lookup
    can point at plugins that could not load and may be the missing provider.
    """

    def __init__(self, kind: str, broken_plugins: Callable[[], dict[str, str]] | None = None):
        self.kind = kind
        self._entries: dict[Hashable, tuple[T, str]] = {}
        self._broken_plugins = broken_plugins or dict

    def add(self, item: T, plugin: str) -> None:
        key = item.key  # type: ignore[attr-defined]
        if key in self._entries:
            other = self._entries[key][1]
            raise DuplicateRegistrationError(
                f"{self.kind} '{_key_text(key)}' is registered by both plugin '{other}' and plugin "
                f"'{plugin}'. Uninstall one of them or disable it with MM_DISABLE_PLUGINS={plugin}."
            )
        self._entries[key] = (item, plugin)

    def get(self, key: Hashable) -> T:
        try:
            return self._entries[key][0]
        except KeyError:
            raise UnknownKeyError(self.unknown_message(key)) from None

    def provider(self, key: Hashable) -> str:
        return self._entries[key][1]

    def unknown_message(self, key: Hashable) -> str:
        known = ", ".join(sorted(_key_text(k) for k in self._entries)) or "none"
        lines = [f"unknown {self.kind} '{_key_text(key)}'. Registered {self.kind}s: {known}."]
        broken = self._broken_plugins()
        if broken:
            lines.append(
                "These plugins failed to load and may be the ones that provide it; fix the error "
                "below (or reinstall the plugin), then retry:"
            )
            for name, trace in broken.items():
                lines.append(f"--- plugin '{name}' is broken:\n{trace.rstrip()}")
        else:
            lines.append("Install the plugin that provides it (`mm-run plugins` lists what is installed).")
        return "\n".join(lines)

    def by_plugin(self, plugin: str) -> list[str]:
        return [_key_text(k) for k, (_, p) in self._entries.items() if p == plugin]

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[T]:
        return (item for item, _ in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Hashable]:
        return list(self._entries)
