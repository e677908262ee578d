"""The dashboard: one page, its scripts and its style, served as the files they are (nothing to
build), under a content security policy of their own. The page holds no secret and needs no
token to load: it signs in from the URL fragment or a pasted token and calls the API as the
user, like any other client."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api.errors import NotFound

ASSETS_DIR = Path(__file__).with_name("dashboard_assets")
PAGE_PATH = "/dashboard"
ASSET_PATH = "/dashboard/{asset}"

# Everything the page loads comes from this origin, and nothing else runs: no inline script or
# style, no eval, no plugin, no frame, no form posted anywhere. Trusted Types with no policy
# refuses every string-to-DOM sink (innerHTML and the like), so whatever the API returns is
# only ever text in the page.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class DashboardFile:
    body: bytes
    media_type: str

    def response(self) -> Response:
        # The other security headers (nosniff, no-store, DENY, no-referrer) are SecurityHeaders'.
        return Response(
            self.body,
            media_type=self.media_type,
            headers={
                "content-security-policy": CONTENT_SECURITY_POLICY,
                "cross-origin-resource-policy": "same-origin",
            },
        )


def asset_names() -> list[str]:
    """The files served under /dashboard/, the page itself aside."""
    return sorted(
        path.name
        for path in ASSETS_DIR.iterdir()
        if path.suffix in _MEDIA_TYPES and path.name != "index.html"
    )


def load_dashboard() -> tuple[DashboardFile, dict[str, DashboardFile]]:
    """The page and its assets, read once at start-up: a missing file fails the start."""

    def read(name: str) -> DashboardFile:
        path = ASSETS_DIR / name
        return DashboardFile(path.read_bytes(), _MEDIA_TYPES[path.suffix])

    return read("index.html"), {name: read(name) for name in asset_names()}


def dashboard_routes() -> list[Route]:
    page, assets = load_dashboard()

    async def serve_page(_: Request) -> Response:
        return page.response()

    async def serve_asset(request: Request) -> Response:
        asset = assets.get(request.path_params["asset"])
        if asset is None:
            raise NotFound()
        return asset.response()

    return [
        Route(PAGE_PATH, serve_page, methods=["GET"], name="dashboard"),
        Route(ASSET_PATH, serve_asset, methods=["GET"], name="dashboardAsset"),
    ]
