"""The poller: pulls deltas from broker REST APIs with the user's stored credentials."""
