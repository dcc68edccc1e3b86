"""The policy server's internal API: a simulator of it, and the watcher that turns it into NATS state."""
