"""Stopping the dev stack: every service gets its shutdown grace to finish, and only one still
running after its grace and a margin is killed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.devstack import stack as dev_stack
from services.devstack.stack import DevStack

# Told to stop, it takes a moment to finish (as a consumer finishing its batch), then exits 0.
FINISHES_ITS_BATCH = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.5), sys.exit(0)))
print("ready", flush=True)
time.sleep(60)
"""
# Never stops on SIGTERM (a service stuck past its cancellation).
IGNORES_SIGTERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


def service(code: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None
    with process.stdout:  # ready once it has set its SIGTERM handler
        assert process.stdout.readline() == b"ready\n"
    return process


def stack_of(tmp_path: Path, grace: str, **services: subprocess.Popen[bytes]) -> DevStack:
    stack = DevStack(state_dir=tmp_path, extra_env={"POSCAL_SHUTDOWN_GRACE_SECONDS": grace})
    stack._services.update(services)
    return stack


def test_the_grace_is_the_one_the_services_are_given(tmp_path: Path) -> None:
    assert stack_of(tmp_path, "2.5").shutdown_grace_seconds() == 2.5
    assert DevStack(state_dir=tmp_path).shutdown_grace_seconds() == 10.0


def test_a_service_finishing_within_its_grace_is_waited_for_not_killed(tmp_path: Path) -> None:
    writer, normalizer = service(FINISHES_ITS_BATCH), service(FINISHES_ITS_BATCH)
    stack_of(tmp_path, "30", writer=writer, normalizer=normalizer).stop()
    assert (writer.returncode, normalizer.returncode) == (0, 0)


def test_a_service_still_running_past_its_grace_and_the_margin_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dev_stack, "STOP_MARGIN_SECONDS", 0.2)
    stuck = service(IGNORES_SIGTERM)
    stack_of(tmp_path, "0.1", poller=stuck).stop()
    assert stuck.returncode == -9
