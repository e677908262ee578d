"""The project's public signing keys, from its JWKS URL: cached, refetched for an unknown `kid`
at most once per interval, and fetched asynchronously with httpx (PyJWT's PyJWKClient uses
blocking urllib, which would stall every request on the event loop while it waits)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import orjson

from services.shared.logging import get_logger

_log = get_logger("poscal.api.jwks")
MAX_JWKS_BYTES = 256 * 1024
MIN_RSA_BITS = 2048
# The key type each asymmetric algorithm is verified with; a key of any other kind is not used.
_KEY_TYPE = {"ES256": ("EC", "P-256"), "RS256": ("RSA", None)}


@dataclass(frozen=True)
class _Key:
    algorithm: str
    key: Any


def usable_keys(document: object, algorithms: frozenset[str]) -> dict[str, _Key]:
    """The signing keys of a JWKS document by kid, pure: only public EC P-256 (ES256) and RSA of
    2048 bits or more (RS256) keys, for algorithms allowed, with a kid; others are left out (a
    symmetric `oct` key, say, would let a token be keyed with something published)."""
    keys = document.get("keys") if isinstance(document, Mapping) else None
    found: dict[str, _Key] = {}
    for entry in keys if isinstance(keys, list) else []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig" or "d" in entry:  # an encryption or private key
            continue
        for algorithm, (kty, crv) in _KEY_TYPE.items():
            if algorithm not in algorithms or entry.get("kty") != kty:
                continue
            if entry.get("alg", algorithm) != algorithm or (crv and entry.get("crv") != crv):
                continue
            try:
                key = jwt.PyJWK(dict(entry), algorithm=algorithm).key
            except (jwt.PyJWTError, ValueError, TypeError):
                continue
            if algorithm == "RS256" and key.key_size < MIN_RSA_BITS:
                continue
            found[entry["kid"]] = _Key(algorithm, key)
    return found


class JwksKeys:
    """`await keys.key_for(kid, algorithm)`: the public key, or None. The keys are refetched when
    older than `max_age_seconds` (so a key the project withdrew stops verifying), and for a kid
    not among them (a key rotated in), but never more often than `min_refresh_seconds` apart,
    however many requests ask: concurrent askers share one fetch. A failed fetch keeps the keys
    there were."""

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        algorithms: frozenset[str],
        *,
        min_refresh_seconds: float = 30.0,
        max_age_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        fetch_timeout_seconds: float = 5.0,
    ) -> None:
        self._url = url
        self._http = http
        self._algorithms = algorithms
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._clock = clock
        self._timeout = fetch_timeout_seconds
        self._keys: dict[str, _Key] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    @property
    def fetched_once(self) -> bool:
        return self._fetched_at is not None

    async def key_for(self, kid: str, algorithm: str) -> Any | None:
        stale = self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age
        if (stale or kid not in self._keys) and self._may_refresh():
            await self.refresh()
        found = self._keys.get(kid)
        return found.key if found is not None and found.algorithm == algorithm else None

    def _may_refresh(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._min_refresh

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the keys now (unless another fetch just did, or `force`); whether it worked."""
        async with self._lock:
            if not force and not self._may_refresh():
                return self.fetched_once  # fetched (or tried) while this one waited
            self._attempted_at = self._clock()
            self.fetches += 1
            try:
                keys = usable_keys(await self._fetch(), self._algorithms)
            except (httpx.HTTPError, ValueError, TimeoutError) as exc:
                _log.warning("jwks fetch failed", cause=type(exc).__name__)
                return False
            self._keys, self._fetched_at = keys, self._clock()
            return True

    async def _fetch(self) -> object:
        async with asyncio.timeout(self._timeout):
            async with self._http.stream("GET", self._url) as response:
                response.raise_for_status()
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError("the JWKS document is too large")
        try:
            return orjson.loads(bytes(body))
        except orjson.JSONDecodeError:
            raise ValueError("the JWKS document is not JSON") from None
