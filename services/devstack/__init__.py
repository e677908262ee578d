"""The embedded dev stack: a throwaway Postgres cluster, a Kafka-protocol broker, the services."""
