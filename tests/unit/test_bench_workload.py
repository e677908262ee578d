"""The end-to-end benchmark's traffic: the demo's own deals, regrouped 1-5 per webhook, replayed
under each sender's login, every webhook id (so every event) unique."""

from __future__ import annotations

import uuid

import orjson

from bench.stats import percentile, slope
from bench.workload import Sender, Traffic, template_stream
from services.devstack.demo_trades import DemoAccount, demo_stream
from services.shared.envelope import derive_event_id


def _sender(login: int) -> Sender:
    return Sender(uuid.uuid4(), f"/v1/webhooks/mt5/{uuid.uuid4()}", b"key", login)


def test_template_carries_the_demo_stream_deals_in_order_one_to_five_per_webhook() -> None:
    template = template_stream(200, "Demo-Server")
    bodies = [orjson.loads(t.for_login(50_000_001)) for t in template]
    assert len(bodies) == 200
    assert all(1 <= len(b["deals"]) <= 5 for b in bodies)
    assert {len(b["deals"]) for b in bodies} == {1, 2, 3, 4, 5}
    deals = [d for b in bodies for d in b["deals"]]
    demo = DemoAccount(50_000_001, "Demo-Server")
    expected = [d for b in demo_stream(demo, 2000) for d in b["deals"]][: len(deals)]
    assert [d["ticket"] for d in deals] == [d["ticket"] for d in expected]
    assert all(b["account"]["login"] == 50_000_001 for b in bodies)
    assert [t.fills for t in template] == [
        sum(1 for d in b["deals"] if d["type"] in (0, 1)) for b in bodies
    ]
    assert bodies[0]["deals"][0]["type"] == 2  # the opening deposit: a cash movement


def test_traffic_hands_over_to_fresh_senders_once_the_template_is_replayed() -> None:
    template = template_stream(3, "Demo-Server")
    senders = [_sender(50_000_000 + i) for i in range(4)]
    traffic = Traffic(senders, template, width=2, run_id="run")
    assert Traffic.senders_needed(12, 3, 2) == 4 and len(traffic) == 12
    logins = [orjson.loads(traffic.delivery(i).body)["account"]["login"] for i in range(12)]
    assert logins == [50_000_000, 50_000_001] * 3 + [50_000_002, 50_000_003] * 3
    assert traffic.delivery(7).body == template[0].for_login(50_000_003)
    assert traffic.connection_ids(6) == [s.connection_id for s in senders[:2]]
    assert traffic.connection_ids(7) == [s.connection_id for s in senders]


def test_every_event_id_is_ingests_for_its_connection_and_webhook_id() -> None:
    senders = [_sender(50_000_000 + i) for i in range(2)]
    traffic = Traffic(senders, template_stream(5, "Demo-Server"), width=2, run_id="run")
    ids = [traffic.event_id(i) for i in range(10)]
    assert len(set(ids)) == 10
    assert ids[3] == derive_event_id(senders[1].connection_id, traffic.delivery(3).webhook_id)


def test_slope_of_a_line_and_nearest_rank_percentiles() -> None:
    assert slope([(0, 1.0), (1, 3.0), (2, 5.0)]) == 2.0
    assert slope([(0, 4.0)]) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
