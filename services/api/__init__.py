"""The app's API: what the PosCal frontend calls, as its signed-in user (see README.md)."""
