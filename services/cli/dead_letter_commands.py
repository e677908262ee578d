"""`poscal-sync dead-letters list | show | replay`: the parsers and the shell around
services/shared/dead_letter_selection.py (reading the topic, printing, producing)."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from services.cli.settings import CliSettings
from services.shared.dead_letter_replay import read_dead_letters, send_replay
from services.shared.dead_letter_selection import (
    InvalidSelection,
    LetterFilter,
    LetterId,
    StoredLetter,
    UnreadableRecord,
    letter_summary,
    letter_view,
    parse_moment,
    plan_replay,
    replay_report,
    select_letters,
)
from services.shared.errors import TransientError
from services.shared.kafka import create_producer, started
from services.shared.topic_reading import TopicNotFound

_STAGES = ("normalizer", "writer")
_REASON_WIDTH = 60


def add_dead_letter_commands(commands: Any) -> None:
    """The `dead-letters` group, on the top-level parser's subcommands."""
    group = commands.add_parser(
        "dead-letters", help="list, show and replay the dead-letter topic's letters"
    ).add_subparsers(dest="dead_letters_command", required=True)

    listing = group.add_parser(
        "list",
        help="the letters a filter selects, oldest failure first",
        description="Reads the dead-letter topic to its end. IDs are PARTITION:OFFSET on it.",
    )
    _add_filters(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    show = group.add_parser(
        "show",
        help="one letter in full: its reason, rejections, the original message decoded",
        description=(
            "Values a sender's message names like secrets (password, token, ...) are redacted"
            " and listed under `redacted`."
        ),
    )
    show.add_argument("letter_id", type=_letter_id, metavar="ID", help="PARTITION:OFFSET")

    replay = group.add_parser(
        "replay",
        help="send the selected letters' original messages back to their source topics",
        description=(
            "Each message goes back exactly as first sent (bytes, key, trace and event-id"
            " headers) to the topic it was read from, marked poscal-replay-of. Every sink is"
            " idempotent, so replaying a letter twice changes nothing more. Letters stay on the"
            " dead-letter topic. Without any filter or ID it refuses, unless --all."
        ),
    )
    replay.add_argument(
        "letter_ids", type=_letter_id, nargs="*", metavar="ID", help="PARTITION:OFFSET"
    )
    _add_filters(replay)
    replay.add_argument("--all", action="store_true", help="replay every letter on the topic")
    replay.add_argument("--dry-run", action="store_true", help="say what would be sent; send none")
    replay.add_argument("--json", action="store_true", help="the report as one JSON object")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", action="append", choices=_STAGES, default=[])
    parser.add_argument(
        "--reason", action="append", default=[], metavar="CODE", help="reason code (repeatable)"
    )
    parser.add_argument("--connection", action="append", type=uuid.UUID, default=[], metavar="ID")
    parser.add_argument("--since", help="failed at or after: ISO time, or ago (30m, 24h, 7d)")
    parser.add_argument("--until", help="failed before: ISO time, or ago")


def _letter_id(text: str) -> LetterId:
    try:
        return LetterId.parse(text)
    except InvalidSelection as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def letter_filter(args: argparse.Namespace, now: datetime) -> LetterFilter:
    """The filter the command line asks for; InvalidSelection for a time that does not read."""
    if args.dead_letters_command == "show":
        return LetterFilter(ids=frozenset({args.letter_id}))
    return LetterFilter(
        stages=frozenset(args.stage),
        reason_codes=frozenset(args.reason),
        connection_ids=frozenset(args.connection),
        since=parse_moment(args.since, now) if args.since else None,
        until=parse_moment(args.until, now) if args.until else None,
        ids=frozenset(getattr(args, "letter_ids", None) or ()),
    )


def run_dead_letter_command(
    args: argparse.Namespace, settings: CliSettings, out: TextIO, err: TextIO
) -> int:
    """0 done; 1 refused (a bad selection, an unknown letter); 3 Kafka could not now."""
    try:
        selection = letter_filter(args, datetime.now(UTC))
    except InvalidSelection as exc:
        print(f"error: {exc}", file=err)
        return 1
    if args.dead_letters_command == "replay" and selection.selects_everything and not args.all:
        print("error: select letters (IDs, --stage, --reason, ...) or say --all", file=err)
        return 1
    try:
        return asyncio.run(_run(args, settings, selection, out, err))
    except (TopicNotFound, TimeoutError, TransientError) as exc:
        print(f"error: {exc}", file=err)
        return 3


async def _run(
    args: argparse.Namespace,
    settings: CliSettings,
    selection: LetterFilter,
    out: TextIO,
    err: TextIO,
) -> int:
    topic = settings.topics.dead_letter
    letters, unreadable = await read_dead_letters(settings.kafka_bootstrap_servers, topic)
    _warn_unreadable(unreadable, err)
    match args.dead_letters_command:
        case "list":
            chosen = select_letters(letters, selection)
            if args.json:
                for stored in chosen:
                    out.write(orjson.dumps(letter_summary(stored)).decode() + "\n")
            else:
                out.write(render_table(chosen, len(letters), topic))
            return 0
        case "show":
            found = select_letters(letters, selection)
            if not found:
                print(f"error: no dead letter {args.letter_id} on {topic}", file=err)
                return 1
            out.write(orjson.dumps(letter_view(found[0]), option=orjson.OPT_INDENT_2).decode())
            out.write("\n")
            return 0
        case "replay":
            return await _replay(args, settings, select_letters(letters, selection), out, err)
    raise AssertionError(f"unhandled dead-letters command {args.dead_letters_command!r}")


async def _replay(
    args: argparse.Namespace,
    settings: CliSettings,
    chosen: Sequence[StoredLetter],
    out: TextIO,
    err: TextIO,
) -> int:
    missing = sorted(set(args.letter_ids) - {stored.id for stored in chosen})
    if missing:
        print(
            "error: no such letter (or not selected by the filters): "
            + ", ".join(map(str, missing)),
            file=err,
        )
        return 1
    plan = plan_replay(chosen, settings.topics.dead_letter)
    if not args.dry_run and plan.records:
        producer = await started(
            create_producer(settings.kafka_bootstrap_servers, "poscal-dead-letter-replay")
        )
        try:
            await send_replay(producer, plan)
        finally:
            await producer.stop()
    report = replay_report(plan, dry_run=args.dry_run)
    out.write(orjson.dumps(report).decode() + "\n" if args.json else render_report(report))
    return 0


def render_table(letters: Sequence[StoredLetter], total: int, topic: str) -> str:
    """`list` for a person: one aligned line per letter, and how many of the topic's these are."""
    rows = [("ID", "FAILED AT (UTC)", "STAGE", "REASON CODE", "CONNECTION", "SOURCE", "REASON")]
    for stored in letters:
        summary = letter_summary(stored)
        source = summary["source"]
        reason = summary["reason"]
        rows.append(
            (
                summary["id"],
                stored.letter.failed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                summary["stage"],
                summary["reason_code"],
                summary["connection_id"] or "-",
                f"{source['topic']}/{source['partition']}@{source['offset']}",
                reason if len(reason) <= _REASON_WIDTH else reason[: _REASON_WIDTH - 3] + "...",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]
    lines.append(f"{len(letters)} of {total} dead letters on {topic}")
    return "\n".join(lines) + "\n"


def render_report(report: dict[str, Any]) -> str:
    """`replay` for a person: what was sent where, and what was not and why."""
    verb = "would replay" if report["dry_run"] else "replayed"
    count = len(report["letters"])
    lines = [f"{verb} {count} of {report['selected']} selected dead letters"]
    lines += [f"  {topic}: {n}" for topic, n in report["per_topic"].items()]
    if report["letters"]:
        lines.append("letters: " + ", ".join(letter["id"] for letter in report["letters"]))
    lines += [f"skipped {s['id']}: {s['why']}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def _warn_unreadable(unreadable: Sequence[UnreadableRecord], err: TextIO) -> None:
    for record in unreadable:
        print(f"warning: record {record.id} is left out: {record.problem}", file=err)
