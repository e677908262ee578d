"""`poscal-sync dev`, as a newcomer runs it: embedded Postgres and broker, the services and the
app API, the demo stream; and on Ctrl-C or SIGTERM, nothing left running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

pytestmark = pytest.mark.e2e


def _env_without_external_services() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "POSCAL_MASTER_KEY")
    }
    return env | {"PYTHONUNBUFFERED": "1"}


def _stack_env(state_dir: Path) -> dict[str, str]:
    lines = (state_dir / "stack.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def _stack_ports(state_dir: Path) -> list[int]:
    values = _stack_env(state_dir)
    return [
        urlparse(values["DATABASE_URL"]).port or 0,
        int(values["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1]),
        urlparse(values["INGEST_URL"]).port or 0,
        urlparse(values["API_URL"]).port or 0,
    ]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _dev(state_dir: Path, *args: str, shell_prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *shell_prefix,
            sys.executable,
            "-m",
            "services.cli",
            "dev",
            "--state-dir",
            str(state_dir),
            "--port",
            "0",
            "--api-port",
            "0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env_without_external_services(),
    )


def _wait_for_line(process: subprocess.Popen[str], text: str, timeout: float = 60) -> None:
    """Until the process prints `text`; fails if it stops printing or takes too long first."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    printed: list[str] = []
    for line in process.stdout:
        if text in line:
            return
        printed.append(line)
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"{text!r} never printed; printed: {''.join(printed)}")


def test_the_demo_streams_webhooks_into_the_journal_and_stops_cleanly(tmp_path: Path) -> None:
    process = _dev(tmp_path, "--demo", "--demo-positions", "6", "--exit-after-demo")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "ready: ingest http://127.0.0.1:" in output
    assert ", API http://127.0.0.1:" in output
    assert "journal unchanged" in output
    written = next(line for line in output.splitlines() if line.startswith("all "))
    assert "journal rows 6" in written
    assert output.rstrip().endswith("stopped: no process left behind")
    env_file = tmp_path / "stack.env"
    assert env_file.stat().st_mode & 0o077 == 0  # holds the master key: owner-only
    assert {line.split("=")[0] for line in env_file.read_text().splitlines()} == {
        "DATABASE_URL",
        "KAFKA_BOOTSTRAP_SERVERS",
        "INGEST_URL",
        "API_URL",
        "POSCAL_MASTER_KEY",
        "POSCAL_API_JWT_SECRET",
    }
    secret = _stack_env(tmp_path)["POSCAL_API_JWT_SECRET"]
    assert len(secret) >= 32 and secret not in output
    assert not any(_listening(port) for port in _stack_ports(tmp_path))


# A shell without job control (`make run &`, CI scripts) starts background jobs ignoring SIGINT.
IGNORING_SIGINT = ("sh", "-c", 'trap "" INT; exec "$@"', "sh")


@pytest.mark.parametrize(
    ("stop_signal", "shell_prefix"),
    [(signal.SIGTERM, ()), (signal.SIGINT, ()), (signal.SIGINT, IGNORING_SIGINT)],
    ids=["SIGTERM", "SIGINT", "SIGINT-inherited-as-ignored"],
)
def test_a_signal_stops_every_process_the_stack_started(
    tmp_path: Path, stop_signal: signal.Signals, shell_prefix: tuple[str, ...]
) -> None:
    process = _dev(tmp_path, "--no-demo", shell_prefix=shell_prefix)
    assert process.stdout is not None
    try:
        _wait_for_line(process, "running; Ctrl-C to stop")
        ports = _stack_ports(tmp_path)
        assert all(_listening(port) for port in ports)
        process.send_signal(stop_signal)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "stopped: no process left behind" in output
    assert not any(_listening(port) for port in ports)


def test_a_killed_stack_leaves_no_server_running(tmp_path: Path) -> None:
    process = _dev(tmp_path, "--no-demo")
    assert process.stdout is not None
    try:
        _wait_for_line(process, "running; Ctrl-C to stop")
        ports = _stack_ports(tmp_path)
        assert all(_listening(port) for port in ports)
    finally:
        process.kill()  # SIGKILL: no handler runs, no stack.stop()
        process.communicate()

    deadline = time.monotonic() + 30
    while any(_listening(port) for port in ports) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [port for port in ports if _listening(port)] == []


def test_a_taken_port_is_reported_clearly_and_nothing_is_left_running(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.cli",
                "dev",
                "--state-dir",
                str(tmp_path),
                "--port",
                str(port),
                "--api-port",
                "0",
                "--no-demo",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env_without_external_services(),
        )
    assert result.returncode == 1
    assert f"error: port {port} is in use" in result.stdout
    assert "stopped: no process left behind" in result.stdout


def test_the_api_answers_a_token_minted_for_the_stack(tmp_path: Path) -> None:
    process = _dev(tmp_path, "--no-demo")
    user_id = uuid.uuid4()
    try:
        _wait_for_line(process, "running; Ctrl-C to stop")
        api_url = _stack_env(tmp_path)["API_URL"]
        minted = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.cli",
                "api",
                "token",
                "--state-dir",
                str(tmp_path),
                "--user-id",
                str(user_id),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "POSCAL_API_JWT_SECRET"},
        )
        assert minted.returncode == 0, minted.stderr
        headers = {"Authorization": f"Bearer {minted.stdout.strip()}"}
        me = httpx.get(f"{api_url}/v1/me", headers=headers, timeout=10)
        connections = httpx.get(f"{api_url}/v1/connections", headers=headers, timeout=10)
        anonymous = httpx.get(f"{api_url}/v1/me", timeout=10)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert me.status_code == 200 and me.json()["user_id"] == str(user_id)
    assert connections.json() == {"connections": [], "next_cursor": None}
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="poscal"'
    assert "stopped: no process left behind" in output


def test_the_demo_prints_a_dashboard_link_signed_in_as_the_demo_user(tmp_path: Path) -> None:
    process = _dev(tmp_path, "--demo", "--demo-positions", "3")
    assert process.stdout is not None
    printed: list[str] = []
    try:
        for line in process.stdout:
            printed.append(line)
            if "the dashboard, signed in as the demo user" in line:
                break
        link = printed[-1].rsplit(" ", 1)[1].strip()
        page_url, _, fragment = link.partition("#")
        token = fragment.removeprefix("access_token=")
        api_url = _stack_env(tmp_path)["API_URL"]
        page = httpx.get(page_url, timeout=10)
        headers = {"Authorization": f"Bearer {token}"}
        me = httpx.get(f"{api_url}/v1/me", headers=headers, timeout=10)
        connections = httpx.get(f"{api_url}/v1/connections", headers=headers, timeout=10)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert page_url == f"{api_url}/dashboard" and fragment.startswith("access_token=")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    demo_user = next(line for line in printed if line.startswith("demo connection "))
    assert me.status_code == 200 and demo_user.rstrip().endswith(f"of user {me.json()['user_id']}")
    lifetime = datetime.fromisoformat(me.json()["token_expires_at"]) - datetime.now(UTC)
    assert timedelta(minutes=55) < lifetime <= timedelta(minutes=60)
    assert [c["account_label"] for c in connections.json()["connections"]] == ["MT5 demo"]
    # Only the console shows it: no log of any service holds the token.
    assert all(token not in log.read_text() for log in (tmp_path / "logs").glob("*.log"))
    assert "stopped: no process left behind" in output
