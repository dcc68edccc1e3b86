"""The policy server's internal API: the client, and the watcher that turns it into NATS state.

The simulator lives in the lab (`lab/sim/policy.py`)."""
