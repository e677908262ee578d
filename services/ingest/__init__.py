"""Ingest: verifies signed broker webhooks and publishes them, exactly as received, to Kafka."""
