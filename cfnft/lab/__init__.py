"""A throwaway foundation for tests, benchmarks and the demo: network namespaces, CNI, listeners, probes, nats-server."""
