"""`GET /v1/brokers`: what the connection wizard offers, read from the broker plug-ins
(services/shared/brokers), so a new broker appears here without a line of the API changing."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from services.api.operations import Call, Operation
from services.shared.brokers import Broker, broker, broker_names


class CredentialFieldView(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    label: str
    secret: bool


class BrokerView(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    title: str
    credential_fields: list[CredentialFieldView]
    # The credentials are one token (the field's text as it is), or a JSON object of the fields.
    credentials_are_a_token: bool
    connection_types: list[Literal["demo", "live"]]
    # The ways its activity arrives: pushed by webhooks (MT5: the Expert Advisor), pulled by the
    # poller (MT5: through a cloud terminal signed in with the investor password).
    syncs_by: list[Literal["webhook", "poll"]]
    # Whether an account needs its trading server named (the account number alone is ambiguous).
    needs_server: bool


class BrokerList(BaseModel):
    model_config = ConfigDict(extra="forbid", title="BrokerList")

    brokers: list[BrokerView]


def syncs_by(plugin: Broker) -> list[Literal["webhook", "poll"]]:
    ways: list[Literal["webhook", "poll"]] = ["webhook"] if plugin.source == "webhook" else []
    return [*ways, "poll"] if plugin.polled else ways


def broker_view(plugin: Broker) -> BrokerView:
    return BrokerView(
        name=plugin.name,
        title=plugin.title,
        credential_fields=[
            CredentialFieldView(name=f.name, label=f.label, secret=f.secret)
            for f in plugin.credentials.fields
        ],
        credentials_are_a_token=plugin.credentials.token,
        connection_types=list(plugin.connection_types),
        syncs_by=syncs_by(plugin),
        needs_server=plugin.needs_server,
    )


async def list_brokers(_: Call) -> BrokerList:
    return BrokerList(brokers=[broker_view(broker(name)) for name in broker_names()])


OPERATIONS = (
    Operation(
        "GET",
        "/v1/brokers",
        list_brokers,
        operation_id="listBrokers",
        summary="The brokers a connection can be made to, and what each needs",
        description=(
            "For each broker: the credential fields its form asks for (with labels, and which"
            " are secret), whether demo and live accounts are supported, and how it syncs."
        ),
        response=BrokerList,
    ),
)
