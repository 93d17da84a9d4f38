"""Observation: request records to metrics, the access log, the decision log, rolling stats."""
