"""Interactive Brokers, by its Flex Web Service: a Flex query's statements, fetched and paged
(`adapter.py`), each mapped (`mapping.py`)."""

from __future__ import annotations

from services.shared.brokers import Broker, CredentialField, Credentials
from services.shared.brokers.ibkr import adapter, mapping

BROKER = Broker(
    name="ibkr",
    title="Interactive Brokers (Flex Web Service)",
    map_event=mapping.map_event,
    # A Flex Web Service token and the id of the Flex query (with a Trades section) it runs.
    credentials=Credentials(
        (
            CredentialField("token", "Flex Web Service token"),
            CredentialField("query_id", "Flex query id", secret=False),
        )
    ),
    content_type=adapter.CONTENT_TYPE,
    payload_owner=mapping.payload_owner,
    poll=adapter.create,
    discover=adapter.discover,
)
