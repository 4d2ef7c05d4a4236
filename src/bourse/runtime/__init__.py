"""How a bourse service runs: declaration, NATS wiring, health, logging, embedded server, shutdown."""
