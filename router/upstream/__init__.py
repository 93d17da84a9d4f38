"""The upstream: the Upstream interface, transports, connections, resilience, assembly."""
