"""Settings: read once from app.conf (``redlock_*``, also under a CELERY_ namespace), each
bad one refused early with its name in the message and no password in sight."""

from __future__ import annotations

import types
from typing import Any

import pytest
from celery import Celery

from celery_redlock import ConfigurationError, Redlock, SingletonTask
from celery_redlock._celery.appconf import LockOptions, OnDuplicate, OnOutage, RedlockConfig
from celery_redlock._celery.handoff import as_owner
from celery_redlock._core.settings import MAX_OWNER_LENGTH
from celery_redlock.task import prepare_worker
from tests.celery_tasks import task_decorator

MASTERS = ["redis://127.0.0.1:7001/0", "redis://127.0.0.1:7002/0", "redis://127.0.0.1:7003/0"]


def config(**conf: Any) -> RedlockConfig:
    return RedlockConfig.from_conf({"redlock_masters": MASTERS, **conf})


def bare_app(**conf: Any) -> Celery:
    app = Celery("settings", set_as_current=False, broker="memory://", backend="cache+memory://")
    app.conf.update(conf)
    return app


def test_defaults() -> None:
    cfg = config()
    assert cfg.defaults == LockOptions()
    assert cfg.defaults.lease == 30.0
    assert cfg.defaults.on_duplicate is OnDuplicate.SKIP
    assert cfg.defaults.on_outage is OnOutage.RETRY
    assert cfg.defaults.outage_deadline == 3600.0
    assert cfg.masters_source == "redlock_masters"
    assert cfg.lock.key_prefix == "redlock:"


def test_values_are_read_and_normalised() -> None:
    from datetime import timedelta

    cfg = config(
        redlock_lease=timedelta(seconds=12),
        redlock_on_duplicate="retry",
        redlock_on_outage="run_unlocked",
        redlock_master_timeout=0.05,
        redlock_key_prefix="app:",
        redlock_dedup=True,
    )
    assert cfg.defaults.lease == 12.0
    assert cfg.defaults.on_duplicate is OnDuplicate.RETRY
    assert cfg.defaults.on_outage is OnOutage.RUN_UNLOCKED
    assert cfg.defaults.dedup is True
    assert cfg.lock.master_timeout == 0.05
    assert cfg.lock.key_prefix == "app:"


def test_masters_may_be_one_string() -> None:
    assert config(redlock_masters=", ".join(MASTERS)).masters == tuple(MASTERS)


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"redlock_masters": []}, "redlock_masters is empty"),
        ({"redlock_masters": ["http://x"]}, "redlock_masters: master URL 'http://x'"),
        ({"redlock_masters": [MASTERS[0], MASTERS[0]]}, "redlock_masters: master .* twice"),
        ({"redlock_lease": -1}, "redlock_lease must be finite and more than 0"),
        ({"redlock_lease": 0.05}, "redlock_lease: ttl 0.05 s leaves no validity"),
        ({"redlock_lease": 600}, "redlock_lease: ttl 600.0 s exceeds restart_guard"),
        ({"redlock_window": 600}, "redlock_window: ttl 600.0 s exceeds restart_guard"),
        ({"redlock_on_duplicate": "ignore"}, "redlock_on_duplicate must be one of 'skip'"),
        ({"redlock_on_outage": "skip"}, "redlock_on_outage must be one of 'retry'"),
        ({"redlock_outage_deadline": 0}, "redlock_outage_deadline must be finite and more than 0"),
        ({"redlock_outage_deadline": "1h"}, "redlock_outage_deadline must be a number of seconds"),
        ({"redlock_dedup": "yes"}, "redlock_dedup must be True or False"),
        ({"redlock_retry_count": -1}, "redlock_retry_count: retry_count must be 0 to 1000"),
        ({"redlock_master_timeout": "fast"}, "redlock_master_timeout: master_timeout must"),
        ({"redlock_leese": 10}, "unknown setting 'redlock_leese'"),
        ({"REDLOCK_LEASE": 10}, "'REDLOCK_LEASE' is not read: .* lower case"),
        ({"redlock_tasks": ["a"]}, "redlock_tasks must map task names to options"),
        ({"redlock_tasks": {"t": {"lock_ttl": 3}}}, r"redlock_tasks\['t'\]: unknown option"),
        ({"redlock_tasks": {"t": {"lock_lease": "x"}}}, r"redlock_tasks\['t'\]\['lock_lease'\]"),
    ],
)
def test_each_bad_setting_is_refused_by_name(conf: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        config(**conf)


def test_settings_of_the_beat_scheduler_are_known() -> None:
    assert config(redlock_beat_lease=10, redlock_beat_key="beat:x")


def test_passwords_never_show() -> None:
    secret = [
        "redis://:hunter2@127.0.0.1:7001/0",
        "redis://:hunter2@127.0.0.1:7002/0",
        "redis://:hunter2@127.0.0.1:7003/0",
    ]
    assert "hunter2" not in repr(config(redlock_masters=secret))
    with pytest.raises(ConfigurationError) as info:
        config(redlock_masters=["redis://:hunter2@127.0.0.1:notaport/0"])
    assert "hunter2" not in str(info.value)


def test_a_redis_broker_serves_as_the_single_master_when_none_is_set() -> None:
    cfg = RedlockConfig.from_conf(bare_app(broker_url="redis://:pw@127.0.0.1:7009/1").conf)
    assert cfg.masters == ("redis://:pw@127.0.0.1:7009/1",)
    assert cfg.masters_source == "broker_url"
    cfg = RedlockConfig.from_conf(bare_app(result_backend="redis://127.0.0.1:7010/2").conf)
    assert cfg.masters_source == "result_backend"


def test_without_masters_or_a_redis_broker_it_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="redlock_masters is not set"):
        RedlockConfig.from_conf(bare_app().conf)


class DjangoStyleSettings:
    CELERY_BROKER_URL = "memory://"
    CELERY_REDLOCK_MASTERS = MASTERS
    CELERY_REDLOCK_LEASE = 7
    CELERY_REDLOCK_ON_DUPLICATE = "raise"


def test_the_celery_namespace_of_django_settings_works() -> None:
    app = Celery("django", set_as_current=False)
    app.config_from_object(DjangoStyleSettings, namespace="CELERY")
    cfg = RedlockConfig.from_conf(app.conf)
    assert cfg.masters == tuple(MASTERS)
    assert cfg.defaults.lease == 7.0
    assert cfg.defaults.on_duplicate is OnDuplicate.RAISE


def test_an_unknown_setting_under_the_namespace_is_refused() -> None:
    settings = type("S", (DjangoStyleSettings,), {"CELERY_REDLOCK_LEAS": 3})
    app = Celery("django", set_as_current=False)
    app.config_from_object(settings, namespace="CELERY")
    with pytest.raises(ConfigurationError, match="unknown setting 'CELERY_REDLOCK_LEAS'"):
        RedlockConfig.from_conf(app.conf)


# --- per-task options, checked when the task is bound ------------------------------------


def bind_task(**options: Any) -> Any:
    app = bare_app(redlock_masters=MASTERS)

    @task_decorator(app)(base=SingletonTask, name="proj.sync", **options)
    def sync(customer_id: int, full: bool = False) -> None:
        """A task to configure."""

    app.finalize()
    return app.tasks["proj.sync"]


def test_task_options_override_the_settings_and_fall_back_to_them() -> None:
    task = bind_task(lock_lease=5, lock_on_duplicate="wait", lock_key=["customer_id"])
    assert task.lock_options.lease == 5.0
    assert task.lock_options.on_duplicate is OnDuplicate.WAIT
    assert task.lock_options.on_outage is OnOutage.RETRY  # from the app
    assert task.lock_resource(1) == task.lock_resource(customer_id=1, full=True)


def test_a_key_function_given_as_a_task_option_is_not_a_method() -> None:
    task = bind_task(lock_key=lambda customer_id, **_: f"customer:{customer_id}")
    assert task.lock_resource(5, full=True) == "customer:5"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lock_on_duplicate": "drop"}, "lock_on_duplicate of task proj.sync must be one of"),
        ({"lock_lease": 0}, "lock_lease of task proj.sync must be finite and more than 0"),
        ({"lock_window": 1000}, "lock_window of task proj.sync: ttl 1000.0 s exceeds"),
        ({"lock_ttl": 3}, "task proj.sync: unknown option 'lock_ttl'"),
        ({"redlock_lease": 3}, "task proj.sync: redlock_lease is an app setting; .* lock_lease"),
        ({"lock_key": ["id"]}, "lock_key of task proj.sync names 'id', which is not an arg"),
    ],
)
def test_each_bad_task_option_fails_at_bind(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        bind_task(**options)


# --- worker start ------------------------------------------------------------------------


def fake_worker(app: Celery, pool: str) -> Any:
    return types.SimpleNamespace(app=app, pool_cls=pool)


@pytest.mark.parametrize("pool", ["celery.concurrency.eventlet:TaskPool", "eventlet"])
def test_the_eventlet_pool_is_refused(pool: str) -> None:
    with pytest.raises(ConfigurationError, match=r"does not support the eventlet pool"):
        prepare_worker(fake_worker(bare_app(redlock_masters=MASTERS), pool))


def test_the_gevent_pool_is_accepted() -> None:
    """A real gevent worker runs in test_task_gevent; here only the start-up check."""
    prepare_worker(fake_worker(bare_app(redlock_masters=MASTERS), "gevent"))


def test_worker_start_warns_when_the_broker_is_the_only_master(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = bare_app(broker_url="redis://:secret@127.0.0.1:7009/0")
    prepare_worker(fake_worker(app, "celery.concurrency.solo"))
    assert "redlock_masters is not set: the broker_url redis://***@127.0.0.1:7009/0" in caplog.text
    assert "secret" not in caplog.text


def test_worker_start_refuses_redlock_tasks_naming_unknown_tasks() -> None:
    app = bare_app(redlock_masters=MASTERS, redlock_tasks={"proj.nope": {}})
    with pytest.raises(ConfigurationError, match=r"not registered: proj\.nope"):
        prepare_worker(fake_worker(app, "celery.concurrency.thread"))


def test_the_celery_layer_names_as_owner_only_what_the_core_accepts() -> None:
    """One owner limit: a task id the core would refuse as owner text is not offered."""
    longest = "t" * MAX_OWNER_LENGTH
    assert as_owner(longest) == longest
    assert as_owner(longest + "t") is None
    with (
        Redlock(MASTERS) as dlm,
        pytest.raises(ConfigurationError, match=f"at most {MAX_OWNER_LENGTH} characters"),
    ):
        dlm.acquire("r", 10, owner=longest + "t")
