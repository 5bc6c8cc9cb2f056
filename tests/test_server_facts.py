"""The facts a master reports about itself, read from a real server's INFO."""

from __future__ import annotations

import socket

from celery_redlock._core.server import INFO_SECTIONS, ServerFacts, parse_info
from celery_redlock.testing import RedisGroup


def _raw_info(port: int, section: str) -> bytes:
    """One INFO reply's bulk text, read off a plain socket (redis-py would parse it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(f"INFO {section}\r\n".encode())
        data = b""
        while b"\r\n" not in data or len(data) < int(data[1 : data.index(b"\r\n")]) + 4:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            data += chunk
    return data[data.index(b"\r\n") + 2 :]


def test_raw_info_and_redis_py_info_give_the_same_facts(shared5: RedisGroup) -> None:
    raw = b"".join(_raw_info(shared5[0].port, section) for section in INFO_SECTIONS)
    client = shared5[0].client()
    try:
        parsed: dict[str, object] = {}
        for section in INFO_SECTIONS:
            parsed.update(client.info(section))
    finally:
        client.close()
    from_raw = ServerFacts.from_info(parse_info(raw))
    assert from_raw == ServerFacts.from_info(parsed)
    assert from_raw.run_id == parsed["run_id"]
    assert from_raw.run_id is not None
    assert len(from_raw.run_id) == 40
    assert from_raw.mode == "standalone"


def test_a_memory_limit_with_an_evicting_policy_is_a_problem(shared5: RedisGroup) -> None:
    client = shared5[1].client()
    try:
        client.config_set("maxmemory", "0")
        client.config_set("maxmemory-policy", "volatile-lru")
        unlimited = ServerFacts.from_info(client.info("memory"))
        client.config_set("maxmemory", "1gb")
        limited = ServerFacts.from_info(client.info("memory"))
        client.config_set("maxmemory-policy", "noeviction")
        safe = ServerFacts.from_info(client.info("memory"))
    finally:
        client.config_set("maxmemory", "0")
        client.config_set("maxmemory-policy", "noeviction")
        client.close()
    assert not unlimited.evicts  # no limit: the policy never applies
    assert limited.evicts
    assert limited.eviction_problem is not None
    assert "volatile-lru" in limited.eviction_problem
    assert not safe.evicts
    assert safe.eviction_problem is None


def test_section_headers_and_blank_lines_are_not_fields() -> None:
    info = parse_info(
        b"# Server\r\nrun_id:abc\r\n\r\n# Memory\r\nmaxmemory:7\r\nmaxmemory_policy:allkeys-lru\r\n"
    )
    assert info == {"run_id": "abc", "maxmemory": "7", "maxmemory_policy": "allkeys-lru"}
    assert ServerFacts.from_info(info).evicts
