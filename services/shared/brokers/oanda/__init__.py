"""OANDA v20: polled over its REST API (`adapter.py`), each page mapped (`mapping.py`)."""

from __future__ import annotations

from services.shared.brokers import Broker, CredentialField, Credentials
from services.shared.brokers.oanda import adapter, mapping

BROKER = Broker(
    name="oanda",
    title="OANDA",
    map_event=mapping.map_event,
    credentials=Credentials((CredentialField("token", "API token"),), token=True),
    content_type=adapter.CONTENT_TYPE,
    payload_owner=mapping.payload_owner,
    poll=adapter.create,
    discover=adapter.discover,
)
