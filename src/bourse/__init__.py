"""bourse: an exchange back end as Python microservices over NATS."""

__version__ = "0.1.0"
