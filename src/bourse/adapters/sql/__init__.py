"""SQL adapter of the persistence service: the schema (`models`), engines and migrations
(`database`), and the batched, idempotent writes (`store`). No business rules."""
