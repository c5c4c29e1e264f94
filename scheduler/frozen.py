"""Fast building and pickling of the frozen dataclasses that make up a Config.

The clock receives its config pickled from the process that parsed it (see loader.py). dataclasses'
generic pickling of frozen slotted classes calls dataclasses.fields() for every object, which made a
100,000-task config take 4 s to pickle and unpickle; pickling by constructor arguments takes a tenth.
"""

from __future__ import annotations

import gc
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

_C = TypeVar("_C", bound=type)


def pickle_by_fields(cls: _C) -> _C:
    """Class decorator for a `@dataclass(frozen=True, slots=True)` whose __init__ takes every field in
    order: pickle it as `cls(*fields)`."""
    names: tuple[str, ...] = cls.__dict__["__slots__"]
    getter: Callable[[Any], Any] = operator.attrgetter(*names)

    def __reduce__(self: Any) -> tuple[type, tuple[Any, ...]]:
        return (cls, getter(self))

    cls.__reduce__ = __reduce__  # type: ignore[method-assign,assignment]
    return cls


@contextmanager
def without_cycle_collection() -> Iterator[None]:
    """While a config is built (parsed or unpickled): many objects, no reference cycles among them. The
    cycle collector would only re-scan them over and over, a third of the time for 10,000 tasks."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
