"""Cloud Controller's v3 security groups (with UAA): a simulator, and the watcher that turns them into NATS state."""
