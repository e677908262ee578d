"""A consumer service told to stop (SIGTERM) finishes its batch within its grace, or is cancelled
and then abandoned: it always exits, even when what it awaits (a broker gone away) never answers.
Each service runs in a process of its own, as it does in production."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

_SERVICE = textwrap.dedent(
    """
    import asyncio, sys
    from services.shared.lifecycle import run_until_signalled

    async def stops_when_asked(stop):
        print("ready", flush=True)
        await stop.wait()
        print("finished its batch", flush=True)

    async def never_answered(stop):
        print("ready", flush=True)
        try:
            await asyncio.Event().wait()  # a flush to a broker that is gone
        finally:
            print("unwound", flush=True)

    async def deaf_to_cancellation(stop):
        print("ready", flush=True)
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                print("ignored a cancellation", flush=True)

    serve = {"stops": stops_when_asked, "hangs": never_answered, "deaf": deaf_to_cancellation}
    sys.exit(run_until_signalled(serve[sys.argv[1]], grace_seconds=0.2))
    """
)


_SAYINGS = {"finished its batch", "unwound", "ignored a cancellation"}


def _run_and_terminate(behaviour: str) -> tuple[int, list[str]]:
    """Start the service, SIGTERM it once ready; its exit code and what it said after."""
    with subprocess.Popen(
        [sys.executable, "-c", _SERVICE, behaviour],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        assert process.stdout is not None
        try:
            assert process.stdout.readline().strip() == "ready"
            process.send_signal(signal.SIGTERM)
            # What the service itself says (the log lines between are the lifecycle's own).
            said = [line.strip() for line in process.stdout if line.strip() in _SAYINGS]
            return process.wait(60), said
        finally:
            if process.poll() is None:
                process.kill()


def test_a_service_that_stops_when_asked_finishes_and_exits_cleanly() -> None:
    assert _run_and_terminate("stops") == (0, ["finished its batch"])


def test_a_service_waiting_on_what_never_answers_is_cancelled_after_its_grace() -> None:
    assert _run_and_terminate("hangs") == (0, ["unwound"])


def test_a_service_that_ignores_cancellation_is_abandoned_and_exits_with_1() -> None:
    code, said = _run_and_terminate("deaf")
    assert code == 1
    assert said[0] == "ignored a cancellation"
