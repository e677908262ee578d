#!/usr/bin/env bash
# Creates the pipeline's topics if absent. Producers use acks=all: with replication factor 3 and
# min.insync.replicas=2, an acknowledged event survives the loss of any one broker.
set -euo pipefail
BOOTSTRAP="${KAFKA_BOOTSTRAP_SERVERS:?set KAFKA_BOOTSTRAP_SERVERS}"
PARTITIONS="${POSCAL_PARTITIONS:-12}"
REPLICATION="${POSCAL_REPLICATION_FACTOR:-3}"
MIN_ISR="${POSCAL_MIN_INSYNC_REPLICAS:-2}"
TOPICS_BIN="${KAFKA_TOPICS_BIN:-/opt/kafka/bin/kafka-topics.sh}"

create() {  # name, retention.ms
    "$TOPICS_BIN" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists --topic "$1" \
        --partitions "$PARTITIONS" --replication-factor "$REPLICATION" \
        --config min.insync.replicas="$MIN_ISR" --config retention.ms="$2" \
        --config unclean.leader.election.enable=false \
        --config max.message.bytes=4194304
}

create "${POSCAL_TOPIC_RAW:-poscal.raw.v1}" $((14 * 24 * 3600 * 1000))           # replay window
create "${POSCAL_TOPIC_CANONICAL:-poscal.canonical.v1}" $((7 * 24 * 3600 * 1000))
create "${POSCAL_TOPIC_DEAD_LETTER:-poscal.deadletter.v1}" $((90 * 24 * 3600 * 1000))  # time to fix
