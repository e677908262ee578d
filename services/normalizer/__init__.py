"""Normalizer: maps raw broker payloads into canonical fills, cash movements and snapshots."""
