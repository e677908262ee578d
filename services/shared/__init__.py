"""What the services share: settings, event contracts, Kafka, tracing, logging, crypto."""
