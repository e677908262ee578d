"""`python -m services.api`: the app API alone (same as `poscal-sync api`)."""

from __future__ import annotations

from services.api.main import main

if __name__ == "__main__":
    raise SystemExit(main())
