"""Application: the pure stage state machines, the order request rules, and the ports
(Protocols and their errors) that adapters implement."""
