"""Canonical events: Avro schemas, CloudEvents headers, and their encoding on Kafka records."""
