"""bus: an enterprise service bus for Python teams, built on Apache Kafka and Avro."""

__version__ = "0.1.0"
