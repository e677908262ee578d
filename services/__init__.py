"""PosCal broker sync: ingest, normalizer and writer services plus what they share."""
