"""The sizing demo (`bourse size`): what each micro-action costs each service, measured on a
running system under a user model (`scenario`), kept as a `profile`, and turned into a plan of
cores and instances for any load (`plan`)."""
