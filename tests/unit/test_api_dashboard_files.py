"""The dashboard's files as the app serves them: each with its media type, the page's own content
security policy and the API's other security headers; a page with no inline code, loading only
files this origin serves; and an unknown file answered as the API answers what is not there."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest

from services.api.app import create_app
from services.api.dashboard import ASSETS_DIR, CONTENT_SECURITY_POLICY, asset_names
from services.api.settings import ApiSettings

SETTINGS = ApiSettings(jwt_secret="a-secret-for-the-dashboard-test-" + "x" * 16)
API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
# Relative module imports: `import { x } from "./charts.js";`
_IMPORT = re.compile(r"""^\s*(?:import|export)\b[^;]*?\bfrom\s+["']\./([\w.-]+)["']""", re.M)


async def _get(path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(SETTINGS))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        return await client.get(path)


class _PageParts(HTMLParser):
    """What the page loads, and any code or style written into it."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in attributes:
            if name == "style" or name.startswith("on"):
                self.inline.append(f"<{tag} {name}=...>")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            if attributes.get("src") is None:
                self.inline.append("<script> without src")
            else:
                self.loads.append(str(attributes["src"]))
        if tag == "link" and attributes.get("href"):
            self.loads.append(str(attributes["href"]))


async def test_the_page_is_served_under_its_own_policy_with_the_api_security_headers() -> None:
    response = await _get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    kept = {
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
    }
    assert {name: response.headers[name] for name in kept} == kept
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["script-src"] == directives["style-src"] == "'self'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert directives["require-trusted-types-for"] == "'script'"


def test_the_page_has_no_inline_code_and_loads_only_files_served_here() -> None:
    page = _PageParts()
    page.feed((ASSETS_DIR / "index.html").read_text())
    assert page.inline == []
    assert page.loads and all(src.startswith("/dashboard/") for src in page.loads)
    assert {src.removeprefix("/dashboard/") for src in page.loads} <= set(asset_names())
    for script in ASSETS_DIR.glob("*.js"):
        imported = set(_IMPORT.findall(script.read_text()))
        assert imported <= set(asset_names()), script.name


@pytest.mark.parametrize("name", asset_names())
async def test_each_file_is_served_as_what_it_is(name: str) -> None:
    response = await _get(f"/dashboard/{name}")
    assert response.status_code == 200
    assert response.content == (ASSETS_DIR / name).read_bytes()
    media_type = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
    assert response.headers["content-type"].startswith(media_type[name.rsplit(".", 1)[1]])
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/dashboard/nothing.js", "/dashboard/..%2Fapp.py"])
async def test_an_unknown_file_is_the_api_404_under_the_api_policy(path: str) -> None:
    response = await _get(path)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert response.headers["content-security-policy"] == API_POLICY
