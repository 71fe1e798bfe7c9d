"""Pure domain code: the instance state machine and the reconcile decision. No I/O here."""
