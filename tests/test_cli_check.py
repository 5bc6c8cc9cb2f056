"""``celery redlock check``, the deploy gate, against real servers that cannot lock.

Each setup here is one that a check of reachability alone passes, while every lock on it
fails or is unsafe: the gate must exit 1 naming the master and the reason.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from celery_redlock._core.protocol import BOOT_KEY
from celery_redlock.cli import EXIT_PROBLEM, redlock
from celery_redlock.testing import RedisGroup, RedisServer, RedisServerError

SECRET = "Gate-Pa55word"


def run(masters: list[Any], *args: str) -> Result:
    app = Celery("check_test", set_as_current=False)
    app.conf.update(redlock_masters=masters)
    obj = CLIContext(app=app, no_color=True, workdir=None)
    result = CliRunner().invoke(redlock, list(args), obj=obj)
    assert isinstance(result.exception, (SystemExit, type(None))), result.exception
    assert SECRET not in result.output
    return result


def problems(masters: list[Any]) -> list[str]:
    result = run(masters, "check", "--json")
    assert result.exit_code == EXIT_PROBLEM, result.output
    found: list[str] = json.loads(result.output)["problems"]
    return found


def cluster_info(client: redis.Redis) -> bytes:
    info: bytes = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
    return info


@pytest.fixture
def two() -> Iterator[RedisGroup]:
    """Two healthy, armed masters to complete a quorum of three."""
    with RedisGroup(2) as group:
        yield group


def test_a_healthy_armed_setup_passes(fresh3: RedisGroup) -> None:
    result = run(fresh3.urls, "check")
    assert result.exit_code == 0, result.output
    assert "configuration OK" in result.output


def test_a_user_without_scripting_fails_the_gate(fresh3: RedisGroup) -> None:
    for server in fresh3:
        server.client().execute_command(  # type: ignore[no-untyped-call]
            "ACL",
            "SETUSER",
            "locker",
            "on",
            f">{SECRET}",
            "~*",
            "allchannels",
            "+@all",
            "-@scripting",
        )
    urls = [f"redis://locker:{SECRET}@127.0.0.1:{port}/0" for port in fresh3.ports]
    found = problems(urls)
    for url in urls:
        name = url.replace(f"locker:{SECRET}@", "")
        assert any(
            p.startswith(f"{name}: no lock can be taken there") and "no permissions" in p
            for p in found
        ), found


def cluster_node() -> RedisServer:
    """A one-node cluster server. A cluster's bus listens 10000 ports above the server's,
    so Redis refuses ports above 55535 (a fifth of the ephemeral range): pick again."""
    args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    for _ in range(30):
        node = RedisServer(armed=False, extra_args=args)
        try:
            return node.start()
        except RedisServerError as exc:
            node.close()
            if "port number too high" not in str(exc).lower():
                pytest.skip(f"this redis-server cannot run in cluster mode: {exc}")
    pytest.fail("no free port at or below 55535 in 30 tries")


def test_a_cluster_node_fails_the_gate(two: RedisGroup) -> None:
    with cluster_node() as node:
        client = node.client()
        client.execute_command("CLUSTER", "ADDSLOTS", *range(16384))  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in cluster_info(client):
            assert time.monotonic() < deadline, "the one-node cluster never came up"
            time.sleep(0.01)
        client.set(BOOT_KEY, "0")  # armed: its cluster mode is its only problem
        found = problems([node.url, *two.urls])
    mine = [p for p in found if p.startswith(f"{node.url}: ")]
    assert any("cluster mode" in p for p in mine), found
    assert any(
        "no lock can be taken there" in p and "don't hash to the same slot" in p for p in mine
    ), found


def test_a_new_master_not_armed_fails_the_gate_and_stays_unarmed(two: RedisGroup) -> None:
    with RedisServer(armed=False) as new:
        found = problems([new.url, *two.urls])
        assert any(p.startswith(f"{new.url}: no boot marker (not armed)") for p in found), found
        assert new.client().get(BOOT_KEY) is None  # the gate did not start its guard
        assert run([new.url, *two.urls], "arm", "--yes").exit_code == 0
        assert run([new.url, *two.urls], "check").exit_code == 0


def test_an_evicting_master_fails_the_gate_and_shows_in_status(two: RedisGroup) -> None:
    args = ["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"]
    with RedisServer(extra_args=args) as evicting:
        masters = [evicting.url, *two.urls]
        found = problems(masters)
        status = run(masters, "status")
    assert any(
        p.startswith(f"{evicting.url}: maxmemory-policy allkeys-lru with maxmemory") for p in found
    ), found
    assert f"problem: {evicting.url}: maxmemory-policy allkeys-lru" in status.output
    assert "allkeys-lru at 104857600 B" in status.output


def test_one_server_listed_twice_fails_the_gate_and_shows_in_status(two: RedisGroup) -> None:
    where = Path(tempfile.mkdtemp(prefix="redlock-sock-"))
    socket = where / "redis.sock"
    try:
        with RedisServer(extra_args=["--unixsocket", str(socket)]) as server:
            masters = [server.url, f"unix://{socket}", two.urls[0]]
            found = problems(masters)
            status = run(masters, "status")
    finally:
        shutil.rmtree(where, ignore_errors=True)
    alias = f"unix://{socket}?db=0: the same server as {server.url}"
    assert any(p.startswith(alias) for p in found), found
    assert f"problem: {alias}" in status.output
    assert "2 of 3 masters can vote" in status.output
