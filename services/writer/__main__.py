"""`python -m services.writer`: the writer alone (same as `poscal-sync writer`)."""

from __future__ import annotations

from services.writer.main import main

if __name__ == "__main__":
    raise SystemExit(main())
