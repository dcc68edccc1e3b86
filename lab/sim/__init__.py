"""Simulators of the CF servers cfnft's watchers talk to: BBS, the policy server's internal API, Cloud
Controller with UAA. Each serves the real routes, headers and wire formats over mutual TLS, with a
scenario API for tests and the demo."""
