"""`poscal-sync dead-letters` against the real broker and database: a message the writer's
database refused is listed and shown, replayed once the cause is gone, written, and replaying it
again leaves the journal exactly as it was; a dry run sends nothing."""

from __future__ import annotations

import uuid

import asyncpg
import orjson
import pytest

from services.devstack.demo import encode_body
from services.shared.dead_letter_selection import REPLAY_OF_HEADER
from services.shared.dead_letters import DeadLetter
from services.shared.settings import Topics
from tests.support.builders import TestConnection, fixture_deals, mt5_body, raw_event
from tests.support.cli_runs import poscal_sync
from tests.support.kafka import read_topic
from tests.support.pipeline import RunningPipeline, running_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_environment(
    monkeypatch: pytest.MonkeyPatch, database_url: str, kafka_bootstrap: str, topics: Topics
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("POSCAL_TOPIC_RAW", topics.raw)
    monkeypatch.setenv("POSCAL_TOPIC_CANONICAL", topics.canonical)
    monkeypatch.setenv("POSCAL_TOPIC_DEAD_LETTER", topics.dead_letter)


async def refuse_fills_of(pool: asyncpg.Pool, connection: TestConnection) -> str:
    """A real refusal by the database (a check violation) of this connection's fills only: what
    a bad deploy's constraint would do. Returns the trigger's name, to drop it (the fix)."""
    name = f"refuse_{uuid.uuid4().hex[:8]}"
    await pool.execute(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'check_violation'; END $$;"
        f" CREATE TRIGGER {name} BEFORE INSERT ON broker_fills FOR EACH ROW"
        f" WHEN (NEW.connection_id = '{connection.created.connection_id}')"
        f" EXECUTE FUNCTION {name}()"
    )
    return name


async def fix(pool: asyncpg.Pool, trigger: str) -> None:
    await pool.execute(f"DROP TRIGGER {trigger} ON broker_fills; DROP FUNCTION {trigger}()")


# What the writer keeps for a connection, each table in a stable order (fixed text, no input).
JOURNAL_QUERIES = {
    "broker_fills": "SELECT * FROM broker_fills WHERE connection_id = $1 ORDER BY fill_key",
    "trading_journal": (
        "SELECT * FROM trading_journal WHERE connection_id = $1 ORDER BY mt5_trade_id"
    ),
    "sync_events": "SELECT * FROM sync_events WHERE connection_id = $1 ORDER BY event_id",
}


async def journal_of(
    pool: asyncpg.Pool, connection: TestConnection
) -> dict[str, list[dict[str, object]]]:
    """Everything the writer keeps for the connection, row by row."""
    return {
        table: [dict(row) for row in await pool.fetch(query, connection.created.connection_id)]
        for table, query in JOURNAL_QUERIES.items()
    }


async def dead_lettered(
    pipeline: RunningPipeline, pool: asyncpg.Pool, connection: TestConnection, topics: Topics
) -> DeadLetter:
    trigger = await refuse_fills_of(pool, connection)
    try:
        body = encode_body(mt5_body(connection.login, fixture_deals(), balance="1069.44"))
        await pipeline.send_raw(raw_event(connection, body))
        [record] = await read_topic(pipeline.bootstrap, topics.dead_letter, expect=1)
        await pipeline.caught_up()
    finally:
        await fix(pool, trigger)
    return DeadLetter.model_validate_json(record.value)


async def test_a_replayed_letter_is_written_and_replaying_it_twice_leaves_the_same_journal(
    kafka_bootstrap: str,
    pool: asyncpg.Pool,
    topics: Topics,
    connection: TestConnection,
    cli_environment: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    connection_id = str(connection.created.connection_id)
    async with running_pipeline(kafka_bootstrap, pool, topics) as pipeline:
        letter = await dead_lettered(pipeline, pool, connection, topics)
        assert (letter.stage, letter.reason_code) == ("writer", "write_rejected")
        assert (await journal_of(pool, connection))["broker_fills"] == []

        status, out, _ = await poscal_sync(
            capsys, "dead-letters", "list", "--connection", connection_id, "--json"
        )
        [listed] = [orjson.loads(line) for line in out.splitlines()]
        assert status == 0
        assert (listed["stage"], listed["reason_code"]) == ("writer", "write_rejected")
        assert listed["source"]["topic"] == topics.canonical

        status, out, _ = await poscal_sync(capsys, "dead-letters", "show", listed["id"])
        shown = orjson.loads(out)
        assert status == 0 and shown["value"]["connection"]["connection_id"] == connection_id
        assert "traceparent" in shown["headers"]

        status, out, _ = await poscal_sync(
            capsys, "dead-letters", "replay", "--connection", connection_id, "--json"
        )
        assert status == 0
        assert orjson.loads(out) | {"letters": None} == {
            "dry_run": False,
            "replayed": 1,
            "selected": 1,
            "per_topic": {topics.canonical: 1},
            "letters": None,
            "skipped": [],
        }
        await pipeline.caught_up()
        once = await journal_of(pool, connection)
        assert len(once["broker_fills"]) == 3 and once["trading_journal"][0]["status"] == "closed"

        status, out, _ = await poscal_sync(capsys, "dead-letters", "replay", listed["id"])
        assert status == 0 and out.startswith("replayed 1 of 1 selected dead letters")
        await pipeline.caught_up()
        assert await journal_of(pool, connection) == once

    # Each replay is the message as first sent: its bytes, key and trace context.
    sent = [
        r
        for r in await read_topic(kafka_bootstrap, topics.canonical, expect=3)
        if r.key == connection_id.encode()
    ]
    assert len(sent) == 3 and len({r.value for r in sent}) == 1
    trace = {dict(r.headers)["traceparent"] for r in sent}
    assert len(trace) == 1
    assert [dict(r.headers).get(REPLAY_OF_HEADER) is not None for r in sent] == [
        False,
        True,
        True,
    ]


async def test_a_dry_run_says_what_it_would_send_and_sends_nothing(
    kafka_bootstrap: str,
    pool: asyncpg.Pool,
    topics: Topics,
    connection: TestConnection,
    cli_environment: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running_pipeline(kafka_bootstrap, pool, topics) as pipeline:
        await dead_lettered(pipeline, pool, connection, topics)
        status, out, _ = await poscal_sync(
            capsys, "dead-letters", "replay", "--stage", "writer", "--dry-run"
        )
        assert status == 0
        assert out.splitlines()[:2] == [
            "would replay 1 of 1 selected dead letters",
            f"  {topics.canonical}: 1",
        ]
        await pipeline.caught_up()
    assert len(await read_topic(kafka_bootstrap, topics.canonical, expect=1)) == 1
    assert (await journal_of(pool, connection))["broker_fills"] == []


async def test_a_replay_without_a_selection_is_refused(
    cli_environment: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = await poscal_sync(capsys, "dead-letters", "replay")
    assert (status, out) == (1, "")
    assert "or say --all" in err


async def test_an_unknown_letter_is_refused_and_a_bad_time_is_named(
    cli_environment: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = await poscal_sync(capsys, "dead-letters", "show", "0:999")
    assert status == 1 and "no dead letter 0:999" in err
    status, _, err = await poscal_sync(capsys, "dead-letters", "list", "--since", "yesterday")
    assert status == 1 and "neither a time" in err
