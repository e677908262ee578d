"""The kinds of credential the vault holds for a connection (the `kind` column, and part of each
ciphertext's associated data, so a sealed value cannot be passed off as another kind)."""

from __future__ import annotations

from typing import Final

# HMAC keys that verify Standard Webhooks `v1` signatures (several during a rotation overlap).
WEBHOOK_SECRET: Final = "webhook_secret"  # noqa: S105 - a kind name, not a secret
# Ed25519 public keys that verify Standard Webhooks `v1a` signatures.
WEBHOOK_PUBLIC_KEY: Final = "webhook_public_key"
# What the poller signs in to a broker with: an API token, or login/password/server.
BROKER_CREDENTIALS: Final = "broker_credentials"
# What a wizard session holds of the credentials it verified, until they become the connection's.
WIZARD_CREDENTIALS: Final = "wizard_credentials"
