"""Lock keys for task calls: one key per call however it is spelled, pure (no Redis, no Celery).

A call's key is the task name plus a digest of its arguments *bound to the task's signature
with defaults applied*, so ``f(1, b=2)``, ``f(a=1, b=2)`` and ``f(1, 2)`` share one key. The
digest covers every argument, or the ones named in ``lock_key``, or none (``lock_key=[]``:
one key per task); a ``lock_key`` function returns the resource name itself.

Arguments are digested through :func:`canonical`, a text form in which values that compare
equal read the same: ``1``, ``1.0``, ``True`` and ``Decimal("1")`` are one number; dicts
and sets ignore order; an aware datetime is read as its UTC instant. A tuple reads as a
list because a JSON round trip through the broker turns one into the other, and the
publisher and the worker must compute the same key. A value with no stable reading (an
arbitrary object) raises :class:`UnkeyableArgument` naming the argument, never a key that
would differ between two equal values; so does a number whose exact reading is longer than
:data:`MAX_DIGITS`, refused before the work of reading it is done.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import inspect
import json
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

from celery_redlock.exceptions import ConfigurationError

__all__ = ["KeySpec", "UnkeyableArgument", "canonical"]

#: Hex digits of SHA-256 kept in a key: 128 bits, so two calls never share a key by chance.
DIGEST_CHARS = 32

#: Most decimal digits a number's exact reading (its numerator, its denominator) may have:
#: Python's default limit for int-to-text conversion, whose cost grows faster than the
#: length of the text that carries the number (``Decimal("1e10000000")`` is 11 bytes).
MAX_DIGITS = 4300
_TOO_BIG = 10**MAX_DIGITS

KeyFunction = Callable[..., str]


class UnkeyableArgument(ConfigurationError):
    """An argument has no stable key; ``argument`` names it. Key on other arguments
    (``lock_key=[...]``) or give a ``lock_key`` function."""

    def __init__(self, message: str, *, argument: str) -> None:
        super().__init__(message)
        self.argument = argument


class _NoStableForm(TypeError):
    """Raised inside :func:`canonical`; turned into UnkeyableArgument with the argument's name."""


def canonical(value: Any) -> str:
    """A text form of ``value`` equal for equal values (see the module docstring)."""
    try:
        return _encode(value)
    except RecursionError:
        raise _NoStableForm("it contains itself (or is nested too deeply)") from None
    except (ValueError, OverflowError) as exc:  # a lower int-to-text limit, a datetime edge
        raise _NoStableForm(f"it has no stable reading ({exc})") from None


def _encode(value: Any) -> str:  # noqa: PLR0911 - one branch per family of types
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float, Decimal, Fraction, complex)):
        return _number(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"b'{bytes(value).hex()}'"
    if isinstance(value, (datetime, date, time, timedelta)):
        return _temporal(value)
    if isinstance(value, uuid.UUID):
        return f"uuid'{value}'"
    if isinstance(value, enum.Enum):
        # Plain Enum members equal only themselves (IntEnum and StrEnum were caught above
        # as the int or str they equal).
        return f"enum'{_qualname(type(value))}.{value.name}'"
    if isinstance(value, Mapping):
        items = sorted(f"{_encode(k)}:{_encode(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, (set, frozenset)):
        return "set(" + ",".join(sorted(_encode(v) for v in value)) + ")"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dataclass(value)
    raise _NoStableForm(f"{type(value).__qualname__} has no stable key")


def _number(value: bool | int | float | Decimal | Fraction | complex) -> str:
    """Numbers by exact value, so every spelling of one number reads the same; at most
    :data:`MAX_DIGITS` digits a side, so reading one costs little whatever it is."""
    if isinstance(value, int):  # bool too; the common case, spelled as Fraction would
        if -_TOO_BIG < value < _TOO_BIG:
            return str(int(value))
        raise _too_long()
    if isinstance(value, complex):
        if value.imag:
            return f"complex({_number(value.real)},{_number(value.imag)})"
        value = value.real
    if isinstance(value, Decimal):
        if value.is_nan():
            return "nan"  # NaN equals nothing, itself included: any key is right
        if value.is_infinite():
            return "inf" if value > 0 else "-inf"
        if not _may_fit(value):
            raise _too_long()
    elif isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    exact = Fraction(value)
    if not (-_TOO_BIG < exact.numerator < _TOO_BIG and exact.denominator < _TOO_BIG):
        raise _too_long()
    return str(exact.numerator) if exact.denominator == 1 else str(exact)


def _may_fit(value: Decimal) -> bool:
    """False when the exact fraction of ``value`` (finite) is surely longer than
    :data:`MAX_DIGITS`, judged from its digits and exponent before any conversion.

    ``c * 10**e``, with ``c`` of ``n`` digits and no trailing zero: for ``e >= 0`` an
    integer of ``n + e`` digits; for ``e < 0`` a denominator of at least ``2**-e`` (so of
    more than MAX_DIGITS digits once ``-e`` passes 3.33 times it) and a numerator of at
    least ``n + e`` digits. The bounds below only refuse what the exact check would.
    """
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    zeros = len(digits) - len(bytes(digits).rstrip(b"\0"))
    significant, exponent = len(digits) - zeros, exponent + zeros
    if not significant:  # zero, whatever its exponent
        return True
    if exponent >= 0:
        return significant + exponent <= MAX_DIGITS
    return -exponent <= 4 * MAX_DIGITS and significant <= 5 * MAX_DIGITS


def _too_long() -> _NoStableForm:
    return _NoStableForm(f"it is a number of more than {MAX_DIGITS} digits")


def _temporal(value: datetime | date | time | timedelta) -> str:
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            return f"datetime'{value.replace(tzinfo=None).isoformat()}'"
        utc = value.astimezone(timezone.utc).replace(tzinfo=None)
        return f"datetime'{utc.isoformat()}Z'"
    if isinstance(value, date):
        return f"date'{value.isoformat()}'"
    if isinstance(value, timedelta):
        return f"timedelta({_number(value // timedelta(microseconds=1))}us)"
    offset = value.utcoffset()
    if offset is None:
        return f"time'{value.isoformat()}'"
    # Aware times compare by their UTC reading, day wrap-around aside.
    moment = datetime.combine(date(2000, 1, 3), value.replace(tzinfo=None)) - offset
    return f"time'{moment.time().isoformat()}Z'"


def _dataclass(value: Any) -> str:
    # Dataclass equality compares the class and the fields with compare=True, nothing else.
    fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.compare}
    return f"{_qualname(type(value))}{_encode(fields)}"


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


@dataclasses.dataclass(frozen=True, slots=True)
class KeySpec:
    """How a task's calls are keyed: ``names`` (None: every argument; empty: the task name
    alone) or a ``function`` returning the resource name from the task's arguments."""

    task: str
    signature: inspect.Signature
    names: tuple[str, ...] | None = None
    function: KeyFunction | None = None
    #: For a signature of plain named parameters (the usual task), its parameter names in
    #: order, their defaults and their JSON spellings, so that binding a call is a loop
    #: rather than inspect's general machinery (every task run keys its call). None
    #: otherwise (``*args``, ``**kwargs``, positional-only): inspect binds those.
    _plain: tuple[str, ...] | None = dataclasses.field(init=False, repr=False, compare=False)
    _defaults: Mapping[str, Any] = dataclasses.field(init=False, repr=False, compare=False)
    _labels: Mapping[str, str] = dataclasses.field(init=False, repr=False, compare=False)
    _positional: int = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        params = self.signature.parameters.values()
        plain = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)
        object.__setattr__(self, "_plain", tuple(p.name for p in params) if plain else None)
        positional = sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        object.__setattr__(self, "_positional", positional)
        defaults = {p.name: p.default for p in params if p.default is not p.empty}
        object.__setattr__(self, "_defaults", defaults)
        object.__setattr__(self, "_labels", {p.name: json.dumps(p.name) for p in params})

    @classmethod
    def parse(cls, task: str, signature: inspect.Signature, lock_key: Any) -> KeySpec:
        """The spec for a task's ``lock_key`` option, checked against its signature."""
        if lock_key is None:
            return cls(task, signature)
        if callable(lock_key):
            return cls(task, signature, function=lock_key)
        names = (lock_key,) if isinstance(lock_key, str) else lock_key
        if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise ConfigurationError(
                f"lock_key of task {task} must be None, argument names or a function,"
                f" not {lock_key!r}"
            )
        params = signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for name in names:
            if name not in params and not takes_any:
                raise ConfigurationError(
                    f"lock_key of task {task} names {name!r}, which is not an argument of"
                    f" {task}{signature}"
                )
        return cls(task, signature, names=tuple(names))

    def resource(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        """The lock resource of one call: ``task:digest``, the task name, or the function's."""
        if self.function is not None:
            return self._from_function(args, kwargs)
        if self.names == ():
            return self.task
        arguments = self.bind(args, kwargs)
        if self.names is not None:
            arguments = {n: arguments[n] for n in self.names if n in arguments}
        labels = self._labels
        parts = sorted(
            f"{labels.get(name) or json.dumps(name)}:{self._canonical(name, v)}"
            for name, v in arguments.items()
        )
        return f"{self.task}:{digest('{' + ','.join(parts) + '}')}"

    def _canonical(self, name: str, value: Any) -> str:
        try:
            return canonical(value)
        except _NoStableForm as exc:
            raise UnkeyableArgument(
                f"argument {name!r} of task {self.task} cannot be keyed: {exc}; key on other"
                " arguments with lock_key=[...] or give a lock_key function",
                argument=name,
            ) from None

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Arguments by parameter name, defaults applied: ``*args`` as the tuple of extra
        positionals, ``**kwargs`` as the mapping of extra keywords. When keying on names,
        that mapping's entries are also read as arguments of their own (never over a
        parameter's), so a name passed through it can be keyed on; its own name still
        names the whole mapping."""
        if self._plain is not None:
            arguments = self._bind_plain(self._plain, args, kwargs)
            if arguments is not None:
                return arguments
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.task} called with bad arguments: {exc}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        if self.names is not None:
            for param in self.signature.parameters.values():
                if param.kind is param.VAR_KEYWORD:
                    extra = arguments.pop(param.name)
                    arguments.update({k: v for k, v in extra.items() if k not in arguments})
                    arguments[param.name] = extra
        return arguments

    def _bind_plain(
        self, names: tuple[str, ...], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """:meth:`bind` for plain named parameters; None when the call does not fit (too
        many, missing, unknown or doubled arguments), for inspect to raise the error.

        A copy of ``inspect.Signature.bind`` kept for speed: the ``ours`` row of
        ``benchmarks/bench_instructions.py`` shows it pays (every run keys its call)."""
        if len(args) > self._positional:
            return None
        arguments: dict[str, Any] = {}
        used = 0
        for i, name in enumerate(names):
            if i < len(args):
                arguments[name] = args[i]
            elif name in kwargs:
                arguments[name] = kwargs[name]
                used += 1
            elif name in self._defaults:
                arguments[name] = self._defaults[name]
            else:
                return None
        return arguments if used == len(kwargs) else None

    def _from_function(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        assert self.function is not None
        resource = self.function(*args, **kwargs)
        if not isinstance(resource, str) or not resource:
            raise ConfigurationError(
                f"lock_key function of task {self.task} must return a non-empty string,"
                f" returned {resource!r}"
            )
        return resource
