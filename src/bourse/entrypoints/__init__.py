"""Entry points: the protocols through which clients reach bourse (REST)."""
