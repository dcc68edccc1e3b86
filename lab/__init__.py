"""A throwaway foundation for tests, benchmarks and the demo: network namespaces, CNI attachment,
listeners, probes, and a nats-server."""
