"""`python -m services.ingest`: the ingest service alone (same as `poscal-sync ingest`)."""

from __future__ import annotations

from services.ingest.main import main

if __name__ == "__main__":
    raise SystemExit(main())
