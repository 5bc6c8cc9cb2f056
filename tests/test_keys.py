"""Lock keys: one key per call however it is spelled; equal values never differ in key."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import math
import tracemalloc
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from kombu.utils import json as kombu_json

from celery_redlock import ConfigurationError, UnkeyableArgument
from celery_redlock.keys import MAX_DIGITS, KeySpec, canonical


def f(a: Any, b: Any = 2, *rest: Any, c: Any = None, **extra: Any) -> None:
    """A task body's signature with every kind of parameter."""


SIG = inspect.signature(f)


def key(lock_key: Any, *args: Any, **kwargs: Any) -> str:
    return KeySpec.parse("proj.f", SIG, lock_key).resource(args, kwargs)


class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 1


@dataclasses.dataclass
class Point:
    x: int
    y: int
    label: str = dataclasses.field(default="", compare=False)


# --- spelling ----------------------------------------------------------------------------


def test_one_key_however_the_call_is_spelled() -> None:
    assert key(None, 1, b=2) == key(None, a=1, b=2) == key(None, 1, 2) == key(None, 1)
    assert key(None, 1, 3) != key(None, 1, 2)
    assert key(None, 1).startswith("proj.f:")


def test_keyword_order_and_extras_do_not_matter() -> None:
    assert key(None, 1, c=3, x=1, y=2) == key(None, c=3, y=2, a=1, x=1)
    assert key(None, 1, x=1) != key(None, 1, x=2)


def test_a_subset_of_arguments_and_omitted_optionals() -> None:
    assert key(["a"], 1, 2) == key(["a"], 1, 3) == key("a", a=1)
    assert key(["a", "c"], 1) == key(["a", "c"], 1, c=None)  # default applied, no crash
    assert key(["a", "x"], 1) != key(["a", "x"], 1, x=5)  # a name only **extra can carry
    assert key(["a"], 1) != key(["b"], 1)


def export(fmt: Any, **filters: Any) -> None:
    """A task that takes its filters as extra keywords."""


def test_lock_key_on_the_extra_keywords_keys_on_their_mapping() -> None:
    spec = KeySpec.parse("proj.export", inspect.signature(export), ["filters"])
    assert spec.resource(("csv",), {"day": 1}) != spec.resource(("csv",), {"day": 2})
    assert spec.resource(("csv",), {"day": 1}) == spec.resource(("pdf",), {"day": 1})
    assert spec.resource(("csv",), {"a": 1, "b": 2}) == spec.resource(("csv",), {"b": 2, "a": 1})
    assert spec.resource(("csv",), {}) != spec.resource(("csv",), {"day": 1})
    # An entry that happens to share the mapping's name does not stand for the mapping.
    assert spec.resource(("csv",), {"filters": 1}) != spec.resource(("csv",), {"filters": 2})
    assert key(["extra"], 1, x=1) != key(["extra"], 1, x=2)
    assert key(["extra"], 1, x=1) == key(["extra"], 2, 3, x=1)
    assert key(["extra", "x"], 1, x=1) != key(["extra", "x"], 1, x=1, y=2)


def test_lock_key_on_the_extra_positionals_keys_on_their_tuple() -> None:
    assert key(["rest"], 1, 2, 3) != key(["rest"], 1, 2, 4)
    assert key(["rest"], 1, 2, 3) == key(["rest"], 9, 8, 3, c=5)
    assert key(["rest"], 1) == key(["rest"], 1, 2) != key(["rest"], 1, 2, 3)


def test_every_argument_includes_the_extras() -> None:
    assert key(None, 1, 2, 3) != key(None, 1, 2, 4)
    assert key(None, 1, x=1) != key(None, 1, x=2) != key(None, 1)


def test_an_extra_keyword_never_stands_in_for_a_parameter() -> None:
    def h(a: Any, /, **kw: Any) -> None:
        """``a`` is positional-only, so ``a=`` lands in ``kw``."""

    spec = KeySpec.parse("proj.h", inspect.signature(h), ["a"])
    assert spec.resource((1,), {"a": 2}) == spec.resource((1,), {"a": 3}) == spec.resource((1,), {})


def test_the_task_name_alone() -> None:
    assert key([], 1) == key([], 2, 3, c=4) == "proj.f"


def test_a_key_function_names_the_resource_itself() -> None:
    assert key(lambda a, **_: f"customer:{a}", 7) == "customer:7"
    with pytest.raises(ConfigurationError, match="must return a non-empty string"):
        key(lambda *_a, **_k: 7, 1)


def test_bad_lock_key_options_are_refused_when_the_task_is_bound() -> None:
    with pytest.raises(ConfigurationError, match="names 'z', which is not an argument"):
        KeySpec.parse("proj.g", inspect.signature(lambda a: a), ["z"])
    with pytest.raises(ConfigurationError, match="must be None, argument names or a function"):
        KeySpec.parse("proj.g", SIG, 3)


def test_bad_arguments_are_a_type_error_naming_the_task() -> None:
    with pytest.raises(TypeError, match=r"task proj\.f called with bad arguments"):
        key(None)


def test_an_unkeyable_argument_is_named() -> None:
    with pytest.raises(UnkeyableArgument, match=r"argument 'b' of task proj\.f") as info:
        key(None, 1, object())
    assert info.value.argument == "b"
    assert key(["a"], 1, object())  # keying on other arguments works
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(UnkeyableArgument, match="contains itself"):
        key(None, looped)


HUGE_NUMBERS = [
    10**MAX_DIGITS,
    -(10**5000),
    Decimal("1e5000"),
    Decimal("-1e10000000"),
    Decimal("1e-10000000"),
    Decimal("7" * (5 * MAX_DIGITS + 1) + "e-1"),
    Fraction(1, 10**MAX_DIGITS),
    Fraction(10**5000, 3),
]


@pytest.mark.parametrize("number", HUGE_NUMBERS, ids=lambda n: type(n).__name__)
def test_a_number_too_long_to_read_is_refused_by_name(number: Any) -> None:
    with pytest.raises(UnkeyableArgument, match=r"argument 'b' .* more than 4300 digits") as info:
        key(None, 1, [number])
    assert info.value.argument == "b"


def test_a_huge_exponent_is_refused_before_the_number_is_built() -> None:
    """``Decimal("1e10000000")`` is 11 bytes in a message; its exact value, an int of ten
    million digits (4 MB), must never be built: refused on its exponent alone."""
    tracemalloc.start()
    try:
        with pytest.raises(UnkeyableArgument):
            key(None, Decimal("1e10000000"))
        with pytest.raises(UnkeyableArgument):
            key(None, Decimal("1e-10000000"))
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000


def test_the_longest_numbers_read_the_same_in_every_spelling() -> None:
    largest = 10**MAX_DIGITS - 1
    assert canonical(largest) == canonical(Decimal(largest)) == canonical(Fraction(largest))
    assert canonical(Decimal(f"1e{MAX_DIGITS - 1}")) == canonical(10 ** (MAX_DIGITS - 1))
    smallest = Fraction(1, 2 * 10 ** (MAX_DIGITS - 1))  # a denominator of 4300 digits
    assert canonical(Decimal(f"5e-{MAX_DIGITS}")) == canonical(smallest)
    assert canonical(Decimal("1." + "0" * 5000)) == canonical(1) == "1"  # zeros are no digits
    assert canonical(Decimal("0e10000000")) == "0"


DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def test_the_docs_show_each_unkeyable_message_as_raised() -> None:
    looped: list[Any] = []
    looped.append(looped)
    messages = []
    for value in (object(), looped, 10**5000):
        with pytest.raises(UnkeyableArgument) as info:
            key(None, 1, value)
        messages.append(str(info.value))
    doc = DOC.read_text()
    assert [m for m in messages if f"`{m}`" not in doc] == []


# --- canonical encodings -----------------------------------------------------------------


EQUAL_PAIRS = [
    (1, 1.0),
    (1, True),
    (1, Decimal("1.00")),
    (0.5, Fraction(1, 2)),
    (0.0, -0.0),
    (complex(2, 0), 2),
    ({"a": 1, "b": 2}, OrderedDict([("b", 2), ("a", 1)])),
    ({1, 2, 3}, frozenset({3, 2, 1})),
    (b"ab", bytearray(b"ab")),
    (Level.HIGH, 1),
    (
        datetime(2024, 1, 1, 12, tzinfo=timezone.utc),
        datetime(2024, 1, 1, 14, tzinfo=timezone(timedelta(hours=2))),
    ),
    (time(12, 0, tzinfo=timezone.utc), time(13, 0, tzinfo=timezone(timedelta(hours=1)))),
    (timedelta(seconds=1), timedelta(milliseconds=1000)),
    (Point(1, 2, "a"), Point(1, 2, "b")),
]

UNEQUAL_PAIRS = [
    (1, "1"),
    (b"1", "1"),
    ([1], {1}),
    (0.1, Decimal("0.1")),
    (date(2024, 1, 1), datetime(2024, 1, 1)),
    (datetime(2024, 1, 1), datetime(2024, 1, 1, tzinfo=timezone.utc)),
    (uuid.UUID(int=1), str(uuid.UUID(int=1))),
    (Color.RED, 1),
    (Point(1, 2), (1, 2)),
    ({"a": 1}, [["a", 1]]),
    (None, "null"),
]


@pytest.mark.parametrize(("left", "right"), EQUAL_PAIRS)
def test_equal_values_read_the_same(left: Any, right: Any) -> None:
    assert left == right
    assert canonical(left) == canonical(right)


def test_a_tuple_and_a_list_share_a_key() -> None:
    """Unequal in Python, but JSON turns a tuple into a list on its way to the worker."""
    assert canonical((1, (2,))) == canonical([1, [2]])


@pytest.mark.parametrize(("left", "right"), UNEQUAL_PAIRS)
def test_unequal_values_of_different_kinds_read_differently(left: Any, right: Any) -> None:
    assert left != right
    assert canonical(left) != canonical(right)


# --- properties --------------------------------------------------------------------------

offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.decimals(allow_nan=False),
    st.fractions(),
    st.text(),
    st.binary(),
    st.uuids(),
    st.dates(),
    st.datetimes(),
    st.datetimes(timezones=offsets),
    st.timedeltas(),
    st.sampled_from([Color.RED, Level.HIGH]),
)
hashable = st.one_of(st.none(), st.booleans(), st.integers(), st.text(), st.uuids(), st.dates())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(hashable, inner, max_size=4),
        st.frozensets(hashable, max_size=4),
        st.builds(Point, st.integers(), st.integers(), st.text()),
    ),
    max_leaves=12,
)


@st.composite
def twins(draw: st.DrawFn, strategy: st.SearchStrategy[Any] = values) -> tuple[Any, Any]:
    """A value and an equal value spelled differently (types, order, time zone)."""
    value = draw(strategy)
    return value, draw(_respell(value))


def _respell(value: Any) -> st.SearchStrategy[Any]:
    if isinstance(value, bool) or value is None or isinstance(value, enum.Enum):
        return st.just(value)
    if isinstance(value, int):
        return st.sampled_from([value, Decimal(value), Fraction(value), *_as_float(value)])
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return st.sampled_from([value, int(value), Decimal(value)])
    if isinstance(value, (float, Decimal)) and math.isfinite(value):
        return st.sampled_from([value, Fraction(value)])
    if isinstance(value, datetime) and value.tzinfo is not None:
        return offsets.map(value.astimezone)
    if isinstance(value, bytes):
        return st.just(bytearray(value))
    if isinstance(value, (list, tuple)):
        return st.tuples(*map(_respell, value)).flatmap(
            lambda items: st.sampled_from([list(items), tuple(items)])
        )
    if isinstance(value, dict):
        items = list(value.items())
        return st.permutations(items).map(dict)
    return st.just(value)


def _as_float(value: int) -> list[Any]:
    return [float(value)] if abs(value) < 2**53 else []


@given(twins())
def test_equal_values_always_share_a_key(pair: tuple[Any, Any]) -> None:
    left, right = pair
    assume(left == right)  # a datetime shifted out of range does not compare
    assert key(None, left, right) == key(None, right, left)
    assert canonical(left) == canonical(right)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(), inner)),
    max_leaves=12,
)


@given(json_values, json_values)
def test_unequal_json_values_never_share_a_key(left: Any, right: Any) -> None:
    assume(left != right)
    assert canonical(left) != canonical(right)


broker_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(),
        st.uuids(),
        st.decimals(allow_nan=False, allow_infinity=False),
        st.dates(),
        st.datetimes(timezones=st.just(timezone.utc)),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(), inner, max_size=4),
    ),
    max_leaves=12,
)


@given(broker_values)
def test_the_publisher_and_the_worker_compute_the_same_key(value: Any) -> None:
    """Arguments cross the broker as JSON (kombu's, which keeps UUIDs, dates, Decimals):
    the key computed from what arrives must be the one computed from what was sent."""
    dumps: Callable[..., str] = kombu_json.dumps
    loads: Callable[..., Any] = kombu_json.loads
    arrived = loads(dumps([value]))[0]
    assert canonical(arrived) == canonical(value)


def g(customer_id: Any, full: Any = False, *, region: Any = "eu") -> None:
    """A plain task signature: named parameters only (bound without inspect)."""


def test_keys_are_stable_across_versions() -> None:
    """Keys live in Redis while workers of two versions run side by side (a rolling
    upgrade): a change of spelling would let both versions run the same call at once."""
    spec = KeySpec.parse("proj.sync_customer", inspect.signature(g), None)
    assert spec.resource((42,), {}) == "proj.sync_customer:36273f3b72bec6ecac76b47b4d3221d1"
    assert spec.resource((), {"customer_id": 42, "full": True}) == (
        "proj.sync_customer:b7c2969b277645007af2c086ad199c27"
    )
    assert key(["a", "x"], 1, x="y") == "proj.f:a3628ab442b434099c63aa2b3a71e23c"


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((1,), {}),
    ((1, True), {}),
    ((), {"customer_id": 1}),
    ((1,), {"region": "us"}),
    ((1,), {"full": 1, "region": "us"}),
    ((1, 2, 3), {}),  # too many positionals
    ((), {}),  # missing customer_id
    ((1,), {"customer_id": 2}),  # given twice
    ((1,), {"nope": 2}),  # unknown
    ((1, False), {"region": "us", "full": True}),  # full given twice
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_the_plain_binder_agrees_with_inspect(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    spec = KeySpec.parse("proj.sync_customer", inspect.signature(g), None)
    try:
        bound = inspect.signature(g).bind(*args, **kwargs)
    except TypeError:
        with pytest.raises(TypeError, match=r"proj\.sync_customer called with bad arguments"):
            spec.bind(args, kwargs)
        return
    bound.apply_defaults()
    assert spec.bind(args, kwargs) == dict(bound.arguments)
