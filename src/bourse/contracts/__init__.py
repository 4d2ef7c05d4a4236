"""Wire contracts: the messages services exchange and the subjects and streams that carry them."""
