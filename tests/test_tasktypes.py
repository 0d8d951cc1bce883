"""The transformations: the specification's examples, grapheme clusters, and properties."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worktask import tasktypes
from worktask.tasktypes import graphemes, lookup, repeat, repeat_length, reverse, swap

# The original specification's examples, in Russian.
SPEC_EXAMPLES = [
    (reverse, "пример", "ремирп"),
    (swap, "пример", "рпмире"),
    (swap, "кот", "окт"),
    (repeat, "пример", "прриииммммееееерррррр"),
]


@pytest.mark.parametrize(("function", "data", "expected"), SPEC_EXAMPLES)
def test_specification_examples(function: Callable[[str], str], data: str, expected: str) -> None:
    assert function(data) == expected


@pytest.mark.parametrize("function", [reverse, swap, repeat])
def test_empty_string_stays_empty(function: Callable[[str], str]) -> None:
    assert function("") == ""


def test_combining_marks_stay_with_their_letter() -> None:
    decomposed_y = "и\u0306"  # й as и + combining breve
    e_acute = "e\u0301"
    assert reverse(f"a{decomposed_y}{e_acute}") == f"{e_acute}{decomposed_y}a"
    assert swap(f"{decomposed_y}б") == f"б{decomposed_y}"
    assert repeat(f"a{e_acute}") == f"a{e_acute}{e_acute}"


def test_emoji_flags_and_crlf_stay_whole() -> None:
    thumbs = "👍🏽"
    flag = "🇷🇺"
    family = "👨‍👩‍👧"
    assert reverse(f"{thumbs}{flag}{family}\r\n") == f"\r\n{family}{flag}{thumbs}"
    assert swap(f"x\r\n{flag}") == f"\r\nx{flag}"
    assert graphemes(f"{thumbs}{flag}{family}\r\n") == [thumbs, flag, family, "\r\n"]


def test_swap_keeps_odd_last_character() -> None:
    assert swap("abcde") == "badce"
    assert swap("a") == "a"


text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)

# Whole characters that stay whole whatever stands beside them. (A string that starts with a
# lone combining mark is no such text: reversed, the mark joins the character before it.)
CLUSTERS = [
    *"абвгдежзийклмнопрстуфхцчшщыэюяabcxyz019 .,",
    "и\u0306",
    "e\u0301",
    "👍🏽",
    "🇷🇺",
    "👨\u200d👩\u200d👧",
    "\r\n",
    "한",
]
whole = st.lists(st.sampled_from(CLUSTERS), max_size=60).map("".join)


@given(whole)
def test_reverse_is_an_involution(data: str) -> None:
    assert reverse(reverse(data)) == data


@given(whole)
def test_swap_is_an_involution(data: str) -> None:
    assert swap(swap(data)) == data


@given(whole)
def test_transformations_keep_the_characters(data: str) -> None:
    assert sorted(graphemes(reverse(data))) == sorted(graphemes(data))
    assert sorted(graphemes(swap(data))) == sorted(graphemes(data))


@given(whole)
def test_repeat_length_is_triangular(data: str) -> None:
    n = len(graphemes(data))
    assert len(graphemes(repeat(data))) == n * (n + 1) // 2


@given(text)
def test_repeat_length_predicts_the_result(data: str) -> None:
    assert repeat_length(data) == len(repeat(data))


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (1, "reverse"),
        (2, "swap"),
        (3, "repeat"),
        ("1", "reverse"),
        ("Swap", "swap"),
        (" repeat ", "repeat"),
    ],
)
def test_lookup_by_code_or_name(value: object, name: str) -> None:
    assert lookup(value).name == name


@pytest.mark.parametrize("value", [9, 0, -1, "nope", True, False, 1.5, None, [1], {"a": 1}, "١"])
def test_unknown_type_lists_valid_types(value: object) -> None:
    with pytest.raises(
        tasktypes.UnknownTaskType, match=r"valid types: 1 \(reverse\), 2 \(swap\), 3 \(repeat\)"
    ):
        lookup(value)


def test_table_is_consistent() -> None:
    codes = [t.code for t in tasktypes.TASK_TYPES]
    assert codes == sorted(set(codes))
    assert [t.duration for t in tasktypes.TASK_TYPES] == [2.0, 5.0, 7.0]
