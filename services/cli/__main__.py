"""`python -m services.cli`: the same as the `poscal-sync` command."""

from __future__ import annotations

from services.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
