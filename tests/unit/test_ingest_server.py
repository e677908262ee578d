"""How ingest runs uvicorn: idle keep-alive connections closed after ingest's own setting, not
uvicorn's default, and no header or access log line of its own."""

from __future__ import annotations

import uvicorn
from starlette.applications import Starlette

from services.ingest.main import server_config
from services.ingest.settings import IngestSettings

KEY = "A" * 43 + "="


def test_uvicorn_closes_idle_keep_alive_connections_after_the_configured_time() -> None:
    configured = uvicorn.Config(Starlette()).timeout_keep_alive + 7
    settings = IngestSettings(master_key=KEY, keepalive_timeout_seconds=configured)
    assert server_config(Starlette(), settings).timeout_keep_alive == configured


def test_uvicorn_adds_no_server_header_and_no_access_log() -> None:
    config = server_config(Starlette(), IngestSettings(master_key=KEY))
    assert (config.server_header, config.access_log) == (False, False)
