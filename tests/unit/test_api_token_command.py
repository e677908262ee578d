"""`poscal-sync api token`: a token the local API accepts for the user named, signed with the
stack's secret (from the environment, else the dev stack's env file), and a clear refusal
without one."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest

from services.api.errors import InvalidToken
from services.api.tokens import TokenPolicy, TokenVerifier
from services.cli.api_commands import run_api_command
from services.cli.main import _parser

SECRET = "a-dev-stack-secret-of-enough-bytes-" + "y" * 8
USER = uuid.UUID("5d9f1c2e-8a4b-4c3d-9e0f-1a2b3c4d5e6f")


def token_command(environ: dict[str, str], *args: str, state_dir: Path) -> tuple[int, str, str]:
    parsed = _parser().parse_args(
        ["api", "token", "--user-id", str(USER), "--state-dir", str(state_dir), *args]
    )
    out, err = io.StringIO(), io.StringIO()
    status = run_api_command(parsed, environ, out, err)
    return status, out.getvalue(), err.getvalue()


def verifier(secret: str = SECRET, issuer: str | None = None) -> TokenVerifier:
    return TokenVerifier(
        TokenPolicy(algorithms=frozenset({"HS256"}), issuer=issuer), secret=secret.encode()
    )


async def test_the_token_names_the_user_for_the_api(tmp_path: Path) -> None:
    status, out, err = token_command({"POSCAL_API_JWT_SECRET": SECRET}, state_dir=tmp_path)
    assert (status, err) == (0, "")
    caller = await verifier().verify(out.strip())
    assert caller.user_id == USER


async def test_without_the_variable_the_dev_stack_s_secret_is_used(tmp_path: Path) -> None:
    (tmp_path / "stack.env").write_text(
        f"DATABASE_URL=postgresql://x\nPOSCAL_API_JWT_SECRET={SECRET}\n"
    )
    status, out, _ = token_command({}, state_dir=tmp_path)
    assert status == 0
    assert (await verifier().verify(out.strip())).user_id == USER


async def test_an_issuer_the_api_requires_is_in_the_token(tmp_path: Path) -> None:
    issuer = "https://project.supabase.co/auth/v1"
    environ = {"POSCAL_API_JWT_SECRET": SECRET, "POSCAL_API_JWT_ISSUER": issuer}
    _, out, _ = token_command(environ, state_dir=tmp_path)
    assert (await verifier(issuer=issuer).verify(out.strip())).user_id == USER


async def test_the_lifetime_asked_for_is_the_token_s(tmp_path: Path) -> None:
    _, out, _ = token_command(
        {"POSCAL_API_JWT_SECRET": SECRET}, "--minutes", "5", state_dir=tmp_path
    )
    caller = await verifier().verify(out.strip())
    _, hour, _ = token_command({"POSCAL_API_JWT_SECRET": SECRET}, state_dir=tmp_path)
    longer = await verifier().verify(hour.strip())
    assert 54 * 60 <= (longer.expires_at - caller.expires_at).total_seconds() <= 56 * 60


async def test_another_secret_s_token_is_refused(tmp_path: Path) -> None:
    _, out, _ = token_command({"POSCAL_API_JWT_SECRET": SECRET}, state_dir=tmp_path)
    with pytest.raises(InvalidToken):
        await verifier("another-secret-of-enough-bytes-" + "z" * 8).verify(out.strip())


def test_without_a_secret_it_says_where_one_comes_from(tmp_path: Path) -> None:
    status, out, err = token_command({}, state_dir=tmp_path)
    assert (status, out) == (2, "")
    assert "POSCAL_API_JWT_SECRET" in err and "poscal-sync dev" in err


def test_a_secret_too_short_to_be_safe_is_refused_unquoted(tmp_path: Path) -> None:
    status, out, err = token_command({"POSCAL_API_JWT_SECRET": "short-s3cret"}, state_dir=tmp_path)
    assert (status, out) == (2, "")
    assert "32 bytes" in err and "short-s3cret" not in err


@pytest.mark.parametrize("minutes", ["0", "1441", "x"])
def test_a_lifetime_outside_a_day_is_a_usage_error(minutes: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        token_command({"POSCAL_API_JWT_SECRET": SECRET}, "--minutes", minutes, state_dir=tmp_path)
    assert exited.value.code == 2
