"""Writer: applies canonical batches to Postgres idempotently and keeps the journal right."""
