"""`GET /v1/analytics`: the signed-in user's trading figures, read as the user (row-level
security decides which accounts there are) from the daily rollup the writer keeps."""

from __future__ import annotations

from services.api.analytics_models import Analytics, AnalyticsQuery
from services.api.operations import Call, Operation


async def analytics(call: Call) -> Analytics:
    raise NotImplementedError("the figures follow in the next commits; this one fixes the shape")


OPERATIONS = (
    Operation(
        "GET",
        "/v1/analytics",
        analytics,
        operation_id="getAnalytics",
        summary="The user's trading figures: headline, returns, drawdown, Sharpe, calendar",
        description=(
            "Closed trades of the user's live accounts (or demo ones, when asked: never both),"
            " filtered by account, broker and days in the user's time zone. Each figure that"
            " could be read two ways says how it is defined (`definitions`, and the comments"
            " of each schema)."
        ),
        response=Analytics,
        query=AnalyticsQuery,
        cost=3,
    ),
)
