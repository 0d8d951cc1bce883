"""The task types: pure string transformations and the one table that names them.

A *character* here is a user-perceived character, an extended grapheme cluster
(Unicode UAX #29): `й` written as `и` + U+0306, `👍🏽`, a flag or `\\r\\n` stay whole.
Adding a type means adding a function and a row to `TASK_TYPES`, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import regex

_GRAPHEME = regex.compile(r"\X")


def graphemes(text: str) -> list[str]:
    """Split text into extended grapheme clusters."""
    return _GRAPHEME.findall(text, concurrent=True)  # releases the GIL


def reverse(text: str) -> str:
    """Reverse the characters: `пример` -> `ремирп`."""
    return "".join(reversed(graphemes(text)))


def swap(text: str) -> str:
    """Swap each pair of neighbours; an odd last character stays: `кот` -> `окт`."""
    chars = graphemes(text)
    chars[0:-1:2], chars[1::2] = chars[1::2], chars[0:-1:2]
    return "".join(chars)


def repeat(text: str) -> str:
    """Repeat each character as often as its 1-based position: `абв` -> `аббввв`."""
    return "".join(char * position for position, char in enumerate(graphemes(text), 1))


def same_length(text: str) -> int:
    """The length, in code points, of a result that only rearranges the text."""
    return len(text)


def repeat_length(text: str) -> int:
    """The length, in code points, of `repeat(text)`, without building it."""
    if text.isascii():  # one code point per character, except "\r\n"
        n = len(text)
        if "\r\n" not in text:
            return n * (n + 1) // 2
    return sum(len(char) * position for position, char in enumerate(graphemes(text), 1))


@dataclass(frozen=True, slots=True)
class TaskType:
    """A kind of task: what it is called, how long it takes and what it computes."""

    code: int
    name: str
    description: str
    duration: float  # simulated seconds, before --delay-scale
    run: Callable[[str], str]
    result_length: Callable[[str], int]  # code points of the result, computed cheaply


TASK_TYPES: tuple[TaskType, ...] = (
    TaskType(1, "reverse", "Reverse the string: пример -> ремирп", 2.0, reverse, same_length),
    TaskType(
        2,
        "swap",
        "Swap each pair of neighbouring characters: пример -> рпмире, кот -> окт",
        5.0,
        swap,
        same_length,
    ),
    TaskType(
        3,
        "repeat",
        "Repeat each character as many times as its position: пример -> прриииммммееееерррррр",
        7.0,
        repeat,
        repeat_length,
    ),
)

BY_CODE: dict[int, TaskType] = {t.code: t for t in TASK_TYPES}
BY_NAME: dict[str, TaskType] = {t.name: t for t in TASK_TYPES}


class UnknownTaskType(ValueError):
    """The type is neither a known code nor a known name."""

    def __init__(self, value: object) -> None:
        super().__init__(f"unknown task type {value!r}; valid types: {describe_types()}")
        self.value = value


def describe_types() -> str:
    """`1 (reverse), 2 (swap), 3 (repeat)`: the valid types, for error messages."""
    return ", ".join(f"{t.code} ({t.name})" for t in TASK_TYPES)


def lookup(value: object) -> TaskType:
    """Find a type by its code (`1`, `"1"`) or its name (`"reverse"`)."""
    if isinstance(value, bool):  # True == 1 in Python, but not in JSON
        raise UnknownTaskType(value)
    if isinstance(value, int):
        found = BY_CODE.get(value)
    elif isinstance(value, str):
        key = value.strip().lower()
        is_code = key.isascii() and key.isdigit() and len(key) < 6
        found = BY_CODE.get(int(key)) if is_code else BY_NAME.get(key)
    else:
        found = None
    if found is None:
        raise UnknownTaskType(value)
    return found
