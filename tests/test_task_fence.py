"""A SingletonTask run carries its lock's fence (``self.lock_fence``): higher for every
later run of the same key, in a real worker; none with ``lock_fencing = False``, and none
outside a run. A beat leader's term carries one too, higher for every later term."""

from __future__ import annotations

import pytest
from celery import Celery

from celery_redlock import ConfigurationError
from celery_redlock._celery.appstate import state_of
from celery_redlock.beat import Leadership, Role
from celery_redlock.testing import RedisGroup
from tests.celery_helpers import running_worker
from tests.test_task_prefork import TIMEOUT
from tests.test_task_settings import MASTERS, bare_app

pytest_plugins = ["tests.celery_fixtures"]


def test_each_run_of_a_key_has_a_higher_fence(singleton_app: Celery) -> None:
    fenced = singleton_app.tasks["fenced"]
    with running_worker(singleton_app, concurrency=2):
        first = [fenced.delay("k").get(timeout=TIMEOUT) for _ in range(3)]
        other = fenced.delay("other").get(timeout=TIMEOUT)
        unfenced = singleton_app.tasks["unfenced"].delay("k").get(timeout=TIMEOUT)
    assert all(isinstance(f, int) and f > 0 for f in first)
    assert first == sorted(set(first))
    assert isinstance(other, int)
    assert unfenced is None


def test_no_fence_outside_a_run(singleton_app: Celery) -> None:
    fenced = singleton_app.tasks["fenced"]
    assert fenced.lock_fence is None
    assert fenced("direct") is None  # a direct call runs unlocked


def test_the_setting_turns_fencing_off_app_wide() -> None:
    app = bare_app(redlock_masters=MASTERS, redlock_fencing=False)
    assert state_of(app).config.defaults.fencing is False


def test_the_setting_must_be_true_or_false() -> None:
    with pytest.raises(ConfigurationError, match="redlock_fencing must be True or False"):
        state_of(bare_app(redlock_masters=MASTERS, redlock_fencing="off")).config  # noqa: B018


def test_each_beat_term_has_a_higher_fence(shared5: RedisGroup) -> None:
    app = bare_app(redlock_masters=shared5.urls, redlock_beat_key=f"beat:fence:{id(shared5)}")
    first, second = Leadership(app), Leadership(app)
    assert first.refresh() is Role.LEADER
    assert second.refresh() is Role.STANDBY
    assert second.fence is None
    term = first.fence
    assert isinstance(term, int)
    assert first.refresh() is Role.LEADER
    assert first.fence == term  # a renewed lease is the same term
    first.resign()
    assert first.fence is None
    assert second.refresh() is Role.LEADER
    assert isinstance(second.fence, int)
    assert second.fence > term
    second.resign()
    state_of(app).manager.close()
