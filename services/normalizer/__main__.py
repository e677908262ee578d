"""`python -m services.normalizer`: the normalizer alone (same as `poscal-sync normalizer`)."""

from __future__ import annotations

from services.normalizer.main import main

if __name__ == "__main__":
    raise SystemExit(main())
