"""A place for a resource that a service opens in its lifespan and handlers use later."""

from typing import Generic, TypeVar

T = TypeVar("T")


class Slot(Generic[T]):
    """Holds a resource once it is open; `get()` fails clearly before that."""

    def __init__(self, name: str, value: T | None = None) -> None:
        self.name = name
        self._value = value

    def set(self, value: T | None) -> None:
        self._value = value

    def get(self) -> T:
        if self._value is None:
            raise ConnectionError(f"{self.name} is not open yet")
        return self._value
