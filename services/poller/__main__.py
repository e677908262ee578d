"""`python -m services.poller`: the poller alone (same as `poscal-sync poller`)."""

from __future__ import annotations

from services.poller.main import main

if __name__ == "__main__":
    raise SystemExit(main())
