"""`Record`: value objects compared and shown by their `__slots__`, the NamedTuple of this package.

typing.NamedTuple and dataclasses would do, but importing typing costs ~5 ms and dataclasses ~10 ms
(it imports inspect) of every container start; this costs nothing.
"""

from __future__ import annotations


class Record:
    """Subclasses list their fields in `__slots__` and set them in `__init__`; treat instances as immutable."""

    __slots__: tuple[str, ...] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, Record) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._fields()))

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({args})"
