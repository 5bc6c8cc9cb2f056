"""docker-compose.yml, checked against what example_project expects (Docker does not run
here): five independent, persistent masters named as the app's defaults name them, a
broker, a worker and two beats with the leader-lease scheduler."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from celery_redlock.beat import LeaderLeaseMixin
from example_project.settings import DEFAULT_BROKER_URL, DEFAULT_MASTERS, Settings

ROOT = Path(__file__).resolve().parent.parent
SCHEDULER = "celery_redlock.beat:RedlockScheduler"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    found: dict[str, Any] = compose["services"]
    return found


def hosts(urls: tuple[str, ...]) -> list[str]:
    return [urlsplit(url).hostname or "" for url in urls]


def command(service: dict[str, Any]) -> list[str]:
    given = service.get("command", [])
    return given.split() if isinstance(given, str) else [str(part) for part in given]


def celery_services(services: dict[str, Any], subcommand: str) -> dict[str, list[str]]:
    return {
        name: command(s)
        for name, s in services.items()
        if command(s)[:4] == ["celery", "-A", "example_project", subcommand]
    }


def test_the_masters_are_the_apps_default_masters_an_odd_number_of_them(
    services: dict[str, Any],
) -> None:
    masters = hosts(DEFAULT_MASTERS)
    assert len(masters) == 5
    assert len(masters) % 2 == 1
    assert len(set(masters)) == len(masters)
    for name in masters:
        assert name in services, f"{name} is in the app's masters but not a service"


def test_each_master_is_independent_and_persistent(services: dict[str, Any]) -> None:
    volumes = []
    for name in hosts(DEFAULT_MASTERS):
        argv = command(services[name])
        assert argv[0] == "redis-server"
        assert argv[argv.index("--appendonly") + 1] == "yes"
        assert argv[argv.index("--appendfsync") + 1] == "always"
        assert not {"--replicaof", "--slaveof"} & set(argv)
        volumes += services[name]["volumes"]
    assert len(set(volumes)) == len(volumes) == 5, "each master needs its own data"
    text = (ROOT / "docker-compose.yml").read_text().lower()
    assert "replicaof" not in text
    assert "slaveof" not in text


def test_the_broker_is_a_service_and_not_a_master(services: dict[str, Any]) -> None:
    broker = urlsplit(DEFAULT_BROKER_URL).hostname
    assert broker in services
    assert broker not in hosts(DEFAULT_MASTERS)


def test_a_worker_and_two_beats_run_the_example_app(services: dict[str, Any]) -> None:
    workers = celery_services(services, "worker")
    beats = celery_services(services, "beat")
    assert len(workers) == 1
    assert len(beats) == 2
    for argv in beats.values():
        assert f"--scheduler={SCHEDULER}" in argv
    schedules = [arg for argv in beats.values() for arg in argv if arg.startswith("--schedule=")]
    assert len(set(schedules)) == 2, "two beats must not share one schedule file"
    for name in [*workers, *beats]:
        service = services[name]
        assert Settings.from_env(service["environment"]) == Settings(), (
            f"{name}'s environment disagrees with the app's defaults"
        )
        assert service["depends_on"]["arm"]["condition"] == "service_completed_successfully"


def test_the_new_masters_are_armed_before_anything_locks(services: dict[str, Any]) -> None:
    argv = command(services["arm"])
    assert argv == ["celery", "-A", "example_project", "redlock", "arm", "--yes"]
    assert set(services["arm"]["depends_on"]) == set(hosts(DEFAULT_MASTERS))


def test_the_app_and_scheduler_named_in_the_commands_exist() -> None:
    """Resolved in a subprocess: importing the app connects its signal receivers, which
    must not land in this test process."""
    code = (
        "import json\n"
        "from celery.app.utils import find_app\n"
        "app = find_app('example_project')\n"
        "app.loader.import_default_modules()\n"
        "print(json.dumps({'main': app.main, 'scheduler': app.conf.beat_scheduler,"
        " 'masters': list(app.conf.redlock_masters),"
        " 'tasks': sorted(t for t in app.tasks if t.startswith('example_project.'))}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    app = json.loads(out.stdout)
    assert app["main"] == "example_project"
    assert app["scheduler"] == SCHEDULER
    assert tuple(app["masters"]) == DEFAULT_MASTERS
    assert app["tasks"] == [
        "example_project.tasks.import_catalog",
        "example_project.tasks.nightly_report",
        "example_project.tasks.settle_balance",
        "example_project.tasks.sync_customer",
    ]
    module, _, name = SCHEDULER.partition(":")
    scheduler = getattr(__import__(module, fromlist=[name]), name)
    assert issubclass(scheduler, LeaderLeaseMixin)
