"""Cache service: exact and semantic response cache on Redis."""
