"""Shared state: the response cache and near cache, the Redis store, ledgers, rate limits."""
