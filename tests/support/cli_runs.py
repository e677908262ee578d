"""`poscal-sync` run in-process as an operator runs it, beside an in-process pipeline."""

from __future__ import annotations

import asyncio
import re

import pytest

from services.cli.main import main

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def without_logs(out: str) -> str:
    """What the command printed: the in-process pipeline's log lines share its stdout."""
    return "".join(line for line in out.splitlines(True) if not LOG_LINE.match(line))


async def poscal_sync(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The command's exit status, stdout and stderr (it runs its own event loop, so in a
    thread of its own)."""
    capsys.readouterr()
    status = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return status, without_logs(captured.out), captured.err
