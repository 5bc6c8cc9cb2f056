"""celery_redlock.fencing.django against real databases, through Django's public API:
SQLite (a file, shared by threads) always, PostgreSQL when one answers.

Django is configured once for the test process, by the first test that asks for it
(``settings.configure`` with both databases, ``django.setup()``); the model is defined
then, in an app label of its own, and its table made with each database's schema editor.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from celery_redlock import ConfigurationError, FenceRejected
from celery_redlock.fencing.django import fenced_update


def database(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


@pytest.fixture(scope="session")
def django_models(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: str | None
) -> Iterator[dict[str, Any]]:
    import django
    from django.conf import settings
    from django.db import connections, models

    databases = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(tmp_path_factory.mktemp("django") / "fence.db"),
        }
    }
    if postgres_server is not None:
        databases["pg"] = database(postgres_server)
    settings.configure(
        DATABASES=databases,
        INSTALLED_APPS=[],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()

    class Order(models.Model):  # type: ignore[misc]  # Django ships no type hints
        code = models.CharField(max_length=20, unique=True)
        shop = models.CharField(max_length=20, default="s")
        number = models.IntegerField(default=1)
        status = models.CharField(max_length=40, default="new")
        holder = models.CharField(max_length=40, null=True)
        fence = models.BigIntegerField(null=True)

        class Meta:
            app_label = "celery_redlock_fencing_tests"
            constraints = (models.UniqueConstraint(fields=["shop", "number"], name="one_number"),)

    for alias in databases:
        with connections[alias].schema_editor() as editor:
            editor.create_model(Order)
    yield {"model": Order, "aliases": list(databases)}
    connections.close_all()


@pytest.fixture(params=["default", "pg"])
def orders(request: pytest.FixtureRequest, django_models: dict[str, Any]) -> Any:
    """The model's manager on one database, emptied for the test."""
    if request.param not in django_models["aliases"]:
        request.getfixturevalue("postgres_url")  # skips, with the reason
    objects = django_models["model"].objects.using(request.param)
    objects.all().delete()
    return objects


def add(orders: Any, fence: int | None, **fields: Any) -> Any:
    return orders.create(code="c1", fence=fence, **fields)


def table(orders: Any) -> list[tuple[Any, ...]]:
    return list(orders.order_by("pk").values_list("code", "status", "holder", "fence"))


@pytest.mark.parametrize("stored", [None, 41, 42])
def test_a_fence_not_lower_than_the_stored_one_writes_and_is_recorded(
    orders: Any, stored: int | None
) -> None:
    row = add(orders, stored)
    fenced_update(orders, {"pk": row.pk}, {"status": "paid", "holder": "a"}, 42)
    assert table(orders) == [("c1", "paid", "a", 42)]


def test_the_same_fence_writes_again(orders: Any) -> None:
    add(orders, None)
    fenced_update(orders, {"code": "c1"}, {"status": "half"}, 7)
    fenced_update(orders, {"code": "c1"}, {"status": "done"}, 7)
    assert table(orders) == [("c1", "done", None, 7)]


def test_a_lower_fence_is_rejected_and_writes_nothing(orders: Any) -> None:
    row = add(orders, 42, status="paid", holder="b")
    with pytest.raises(FenceRejected) as caught:
        fenced_update(orders, {"pk": row.pk}, {"status": "refunded", "holder": "a"}, 41)
    assert (caught.value.offered, caught.value.standing, caught.value.reason) == (41, 42, "higher")
    assert (
        str(caught.value) == f"write to Order (pk={row.pk}) rejected: fence 41 offered, 42 stands"
    )
    assert table(orders) == [("c1", "paid", "b", 42)]


def test_an_update_of_a_missing_row_says_so(orders: Any) -> None:
    add(orders, 5)
    with pytest.raises(FenceRejected) as caught:
        fenced_update(orders, {"code": "nope"}, {"status": "paid"}, 9)
    assert (caught.value.standing, caught.value.reason) == (None, "missing")
    assert (
        str(caught.value) == "write to Order (code='nope') rejected: no such row (fence 9 offered)"
    )
    assert table(orders) == [("c1", "new", None, 5)]


def test_a_unique_constraint_names_a_row_too(orders: Any) -> None:
    add(orders, 1, shop="x", number=8)
    fenced_update(orders, {"shop": "x", "number": 8}, {"status": "paid"}, 2)
    assert table(orders) == [("c1", "paid", None, 2)]


def test_the_manager_works_as_well_as_a_queryset(django_models: dict[str, Any]) -> None:
    manager = django_models["model"].objects  # the default database
    manager.all().delete()
    manager.create(code="m", fence=None)
    fenced_update(manager, {"code": "m"}, {"status": "via manager"}, 3)
    assert manager.get(code="m").status == "via manager"


@pytest.mark.parametrize(
    "case",
    [
        ({"status": "new"}, {}, "key ['status'] of celery_redlock_fencing_tests.Order is not"),
        ({"shop": "s"}, {}, "is not its primary key nor a unique constraint"),
        ({"colour": "red"}, {}, "celery_redlock_fencing_tests.Order has no field 'colour'"),
        ({"pk__gt": 0}, {}, "has no field 'pk__gt'"),
        ({"code": "c1"}, {"fence": 3}, "the fence column 'fence' is written by the check"),
        ({}, {"status": "x"}, "key must be a non-empty mapping"),
    ],
)
def test_a_write_that_is_not_one_rows_is_refused_before_it_runs(
    orders: Any, case: tuple[Any, Any, str]
) -> None:
    key, values, message = case
    add(orders, None)
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        fenced_update(orders, key, values, 5)
    assert table(orders) == [("c1", "new", None, None)]


@pytest.mark.parametrize("fence", [True, 1.0, "5", None, 0, -1, 2**63])
def test_a_bad_fence_is_refused_before_anything_is_written(orders: Any, fence: Any) -> None:
    add(orders, None)
    with pytest.raises(ConfigurationError, match=r"^fence must be"):
        fenced_update(orders, {"code": "c1"}, {"status": "x"}, fence)
    assert table(orders) == [("c1", "new", None, None)]


def test_racing_writers_leave_the_highest_fences_data(orders: Any) -> None:
    from django.db import connections, transaction

    add(orders, None)
    fences = random.sample(range(1_800_000_000_000_000, 1_800_000_000_000_100), 8)
    start = threading.Barrier(len(fences))
    outcome: dict[int, Any] = {}

    def run(fence: int) -> None:
        start.wait()
        try:
            with transaction.atomic(using=orders.db):
                fenced_update(orders, {"code": "c1"}, {"holder": f"w{fence}"}, fence)
                time.sleep(0.02)  # hold the row a moment: the others meet its lock
            outcome[fence] = "ok"
        except Exception as exc:  # recorded, and asserted on below
            outcome[fence] = exc
        finally:
            connections[orders.db].close()

    threads = [threading.Thread(target=run, args=(f,)) for f in fences]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    top = max(fences)
    assert len(outcome) == len(fences)
    assert outcome[top] == "ok"
    assert table(orders) == [("c1", "new", f"w{top}", top)]
    assert any(result != "ok" for result in outcome.values())  # 1 chance in 8! otherwise
    for fence, result in outcome.items():
        if result != "ok":
            assert isinstance(result, FenceRejected), result
            assert result.offered == fence
            assert result.standing is not None
            assert result.standing > fence
