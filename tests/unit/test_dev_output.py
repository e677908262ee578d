"""What `poscal-sync dev` prints and shows of itself never carries a password or the master key."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli.dev import without_password
from services.devstack.stack import DevStack


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        ("postgresql://poscal:s3cr%40t@db:5432/poscal", "postgresql://poscal:***@db:5432/poscal"),
        (
            "postgresql://h/db?password=s3cret&sslmode=require",
            "postgresql://h/db?password=***&sslmode=require",
        ),
        (
            "postgresql://postgres@127.0.0.1:5432/poscal",
            "postgresql://postgres@127.0.0.1:5432/poscal",
        ),
    ],
)
def test_a_database_url_is_printed_without_its_password(url: str, printed: str) -> None:
    assert without_password(url) == printed


def test_the_stack_repr_shows_no_database_url_master_key_or_api_secret(tmp_path: Path) -> None:
    stack = DevStack(
        state_dir=tmp_path,
        database_url="postgresql://poscal:s3cret@db/poscal",
        master_key="bWFzdGVyLWtleS1ub3QtdG8tYmUtc2hvd24=",
        api_jwt_secret="api-jwt-secret-not-to-be-shown-anywhere",
    )

    assert "s3cret" not in repr(stack)
    assert "bWFzdGVyLWtleS" not in repr(stack)
    assert "api-jwt-secret" not in repr(stack)
