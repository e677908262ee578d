"""MetaTrader 5: every way an account's deals arrive maps to the same keys (server, login and the
broker's tickets), so one account synced through any mix of them has one set of journal rows."""

from __future__ import annotations

from services.shared.brokers import Broker, CredentialField, Credentials
from services.shared.brokers.mt5 import report, webhook
from services.shared.brokers.mt5.metaapi import adapter as metaapi_adapter
from services.shared.brokers.mt5.metaapi import mapping as metaapi_mapping
from services.shared.brokers.mt5.metaapi import terminals as metaapi_terminals

BROKER = Broker(
    name="mt5",
    title="MetaTrader 5",
    map_event=webhook.map_event,  # a webhook body (the Expert Advisor's, or a bridge's)
    # The account's sign-in: what a cloud terminal logs in with (the investor password suffices).
    credentials=Credentials(
        (
            CredentialField("login", "Login", secret=False),
            CredentialField("password", "Investor password"),
            CredentialField("server", "Server", secret=False),
        )
    ),
    source="webhook",
    payload_owner=webhook.payload_owner,
    needs_server=True,  # deal keys embed server and login: a blank one would match no webhook
    # Cloud sync: a MetaApi terminal logged in with the investor password, made per connection
    # by `connections provision` and polled once it is ready.
    poll=metaapi_adapter.create,
    terminals=metaapi_terminals.create,
    payload_kinds={
        metaapi_mapping.KIND: metaapi_mapping.map_event,  # the poller's MetaApi pages
        report.KIND: report.map_event,  # a terminal's history report (`poscal-sync import`)
    },
)
