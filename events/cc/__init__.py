"""Cloud Controller's v3 security groups (with UAA): the client, and the watcher that turns them into NATS state.

The simulator lives in the lab (`lab/sim/cc.py`)."""
