"""What every inbound adapter shares: the HTTP server, bounded bodies, idempotent ids, and
storing an event in Kafka before anything is answered."""
