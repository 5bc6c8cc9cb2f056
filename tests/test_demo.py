"""`make demo` in CI: the demo runs end to end and exits 0, and stops everything it started,
also when interrupted; its independent overlap check does find overlaps."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from example_project.demo.report import percentile
from example_project.runlog import Run, overlaps
from example_project.settings import DEFAULT_MASTERS, Settings

ROOT = Path(__file__).resolve().parent.parent


def run(task: str, key: str, start: float, end: float) -> Run:
    return Run(task, key, f"{task}-{start}", 1, start, end)


def test_the_overlap_check_finds_overlaps_per_key_only() -> None:
    runs = [
        run("sync", "1", 0.0, 2.0),
        run("sync", "1", 2.0, 3.0),  # touches the previous one: not an overlap
        run("sync", "2", 0.5, 1.5),  # another key: runs in parallel by design
        run("sync", "1", 2.5, 4.0),  # starts inside the second run
        run("sync", "3", 0.0, 10.0),
        run("sync", "3", 4.0, 5.0),  # inside a long run that is not the latest to start
        run("sync", "3", 6.0, 7.0),
    ]
    found = [(a.key, a.start, b.start) for a, b in overlaps(runs)]
    assert found == [("1", 2.0, 2.5), ("3", 0.0, 4.0), ("3", 0.0, 6.0)]


def test_percentiles_are_measured_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0


def test_settings_come_from_the_environment() -> None:
    assert Settings.from_env({}).masters == DEFAULT_MASTERS
    got = Settings.from_env(
        {
            "EXAMPLE_BROKER_URL": "redis://b:1/0",
            "EXAMPLE_REDLOCK_MASTERS": "redis://m1:1/0, redis://m2:1/0,redis://m3:1/0",
            "EXAMPLE_REPORT_EVERY": "2.5",
        }
    )
    assert got.masters == ("redis://m1:1/0", "redis://m2:1/0", "redis://m3:1/0")
    assert (got.result_backend, got.runlog_url, got.report_every) == ("redis://b:1/0",) * 2 + (2.5,)


def leftovers(marker: str) -> list[str]:
    """Processes whose command line or working dir mentions ``marker`` (our temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if marker in cmdline or marker in cwd:
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def wait_for_leftovers_to_go(marker: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := leftovers(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture
def demo_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The demo's environment, with every temp dir (redis-server dirs included) under
    ``tmp_path``, so that its processes can be told from anyone else's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEMO_", "EXAMPLE_"))}
    yield {**env, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    assert wait_for_leftovers_to_go(str(tmp_path)) == []


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_demo_runs_end_to_end_and_its_checks_hold(
    demo_env: dict[str, str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "example_project.demo", "--duration", "20"],
        cwd=ROOT,
        env=demo_env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "all checks held" in out
    for measure in (
        "every call accounted for",
        "beat ticks vs executions",
        "long import (renewal)",
        "when a master died",
        "when it came back empty",
    ):
        assert re.search(rf"^ok\s+{re.escape(measure)}\s", out, re.MULTILINE), measure
    assert re.search(r"^ok\s+overlapping runs\s+0 \(independent check", out, re.MULTILINE)
    assert re.search(r"lock acquire latency\s+p50 [\d.]+ ms, p99 [\d.]+ ms", out)
    assert "0 sent twice" in out
    assert not list(tmp_path.glob("celery-redlock-redis-*")), "a server dir was left behind"
    assert not list(tmp_path.glob("celery-redlock-demo-*")), "the logs of a good run are kept"


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("signum", "to_group"),
    [
        pytest.param(signal.SIGINT, True, id="ctrl-c"),  # a terminal signals the whole job
        pytest.param(signal.SIGTERM, False, id="sigterm"),  # a supervisor signals the demo
    ],
)
def test_an_interrupt_stops_every_process_the_demo_started(
    demo_env: dict[str, str], signum: signal.Signals, to_group: bool
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "example_project.demo", "--duration", "60"],
        cwd=ROOT,
        env=demo_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("the scenario begins" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        time.sleep(3)  # runs in flight, the import's lock soon
        if to_group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        assert proc.wait(timeout=40) == 130, "".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
    assert "interrupted: every process the demo started is stopped" in "".join(lines)
