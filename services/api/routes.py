"""Every operation the API serves, in the order the OpenAPI document lists them."""

from __future__ import annotations

from services.api import analytics, brokers, connections, controls, me, status, wizard
from services.api.operations import Operation

OPERATIONS: tuple[Operation, ...] = (
    *me.OPERATIONS,
    *brokers.OPERATIONS,
    *connections.OPERATIONS,
    *status.OPERATIONS,
    *controls.OPERATIONS,
    *wizard.OPERATIONS,
    *analytics.OPERATIONS,
)
