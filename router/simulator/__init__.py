"""The simulated DeepSeek: wire formats in, answers out. Never imports the proxy."""
