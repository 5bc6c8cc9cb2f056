"""A fenced write through Django's ORM: one ``QuerySet.update()`` that compares and
writes at once::

    Order.objects.filter(pk=7)
         .filter(Q(fence__isnull=True) | Q(fence__lte=ours))
         .update(status="paid", fence=ours)

which is one ``UPDATE ... WHERE`` statement, atomic by the database's row locking (see
:mod:`celery_redlock.fencing.sqlalchemy` for what that means on PostgreSQL and SQLite).
It runs in whatever transaction is open (``transaction.atomic()``) or autocommits.

Django has no conditional upsert (``update_or_create`` reads, then writes: two
statements; ``bulk_create(update_conflicts=True)`` takes no condition), so a missing row
is reported, not created: create it beforehand with a NULL fence, which any fence beats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db.models import Q, UniqueConstraint

from celery_redlock.exceptions import ConfigurationError, FenceRejected
from celery_redlock.fencing import _row_write, _target, as_fence

__all__ = ["fenced_update"]


def fenced_update(
    objects: Any,
    key: Mapping[str, Any],
    values: Mapping[str, Any],
    fence: int,
    *,
    field: str = "fence",
) -> None:
    """Update the row of ``objects`` (a model's manager or a queryset:
    ``Order.objects``, ``Order.objects.using("replica")``) named by ``key`` with
    ``values``, and its ``field`` to ``fence``, if the row's fence is NULL or not higher.

    ``key`` is field lookups naming one row: ``{"pk": 7}``, or the fields of a unique
    constraint. An equal fence is accepted: fences are unique per acquisition, so it is
    the same holder writing again. Raises ``FenceRejected`` (``reason`` ``"higher"``
    with the standing fence, or ``"missing"``) with the row unchanged.
    """
    ours = as_fence(fence)
    _row_write(key, values, field)
    model = objects.model
    _one_row(model, key)
    row = objects.filter(**key)
    not_higher = Q(**{f"{field}__isnull": True}) | Q(**{f"{field}__lte": ours})
    if row.filter(not_higher).update(**values, **{field: ours}) == 1:
        return
    found = list(row.values_list(field, flat=True)[:1])
    target = _target(model.__name__, key)
    if not found:
        raise FenceRejected(target, ours, None, reason="missing")
    standing = found[0]
    if isinstance(standing, bool) or not isinstance(standing, int):
        raise FenceRejected(
            target, ours, None, reason="unreadable", found=f"its fence is not an int: {standing!r}"
        )
    raise FenceRejected(target, ours, standing)


def _one_row(model: Any, key: Mapping[str, Any]) -> None:
    """``key`` must name one row (see the SQLAlchemy twin): the primary key, a unique
    field, or the fields of a ``unique_together`` or an unconditional ``UniqueConstraint``.
    Read from the model's documented ``_meta`` (Django's Options API)."""
    options = model._meta
    names = {"pk" if name == "pk" else _field_name(options, name) for name in key}
    unique = [{"pk"}, {options.pk.name}]
    unique += [{f.name} for f in options.concrete_fields if f.unique]
    unique += [set(fields) for fields in options.unique_together]
    unique += [
        set(c.fields)
        for c in options.constraints
        if isinstance(c, UniqueConstraint) and c.fields and c.condition is None
    ]
    if names not in unique:
        raise ConfigurationError(
            f"key {sorted(key)} of {options.label} is not its primary key nor a unique"
            f" constraint: a fenced write is one row's, whole or not at all"
        )


def _field_name(options: Any, name: str) -> str:
    """The field a key names (``customer_id`` is the ``customer`` foreign key)."""
    try:
        return str(options.get_field(name).name)
    except FieldDoesNotExist:  # also a lookup such as ``id__exact``: name the field
        raise ConfigurationError(f"{options.label} has no field {name!r}") from None
