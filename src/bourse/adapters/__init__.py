"""Thin wrappers around libraries (HTTP server, NATS, SQL, Redis, RabbitMQ); no business rules."""
