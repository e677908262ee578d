"""The MT5 sign-in the vault keeps for a connection (login, investor password, server), read and
held to the connection's own account."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from services.shared.brokers.errors import CredentialsRejected, CredentialsUnreadable
from services.shared.envelope import ConnectionRef


class CredentialsForAnotherAccount(CredentialsRejected):
    """The stored sign-in is for another MT5 account than the connection's: replace it."""

    def __init__(self, connection: ConnectionRef, login: str, server: str) -> None:
        Exception.__init__(
            self,
            f"the stored MT5 credentials are for login {login} on {server!r}, but the connection"
            f" is for login {connection.account_number} on {connection.server!r}",
        )
        self.status_code = 0


@dataclass(frozen=True)
class Mt5SignIn:
    login: str
    password: str = field(repr=False)
    server: str


def read_sign_in(credentials: bytes, connection: ConnectionRef) -> Mt5SignIn:
    """The sign-in, or CredentialsUnreadable / CredentialsForAnotherAccount (never quoting the
    password)."""
    try:
        document = orjson.loads(credentials)
    except orjson.JSONDecodeError:
        document = None
    fields = (
        [document.get(name) for name in ("login", "password", "server")]
        if isinstance(document, dict)
        else []
    )
    if len(fields) != 3 or not all(isinstance(value, str) and value for value in fields):
        raise CredentialsUnreadable("mt5", 'a JSON object {"login", "password", "server"}')
    login, password, server = (str(value) for value in fields)
    if login.strip() != connection.account_number or server.strip() != connection.server:
        raise CredentialsForAnotherAccount(connection, login.strip(), server.strip())
    return Mt5SignIn(login.strip(), password, server.strip())
