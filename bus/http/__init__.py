"""HTTP pieces every HTTP-speaking part of the bus shares (inbound server, admin API)."""
