"""`GET /v1/me`: who the API takes the caller for, straight from their verified token."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from services.api.operations import Call, Operation


class Me(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Me")

    user_id: uuid.UUID
    token_expires_at: datetime


async def me(call: Call) -> Me:
    return Me(user_id=call.caller.user_id, token_expires_at=call.caller.expires_at)


OPERATIONS = (
    Operation(
        "GET",
        "/v1/me",
        me,
        operation_id="getMe",
        summary="The signed-in user, as the access token names them",
        description="The user id (`sub`) and when the token expires: sign in again before then.",
        response=Me,
    ),
)
