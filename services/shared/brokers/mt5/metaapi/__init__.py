"""MT5 accounts synced through MetaApi's cloud terminals, logged in with the investor password:
provisioning (terminals.py), the poll adapter (adapter.py) and its payload's mapper (mapping.py)."""
