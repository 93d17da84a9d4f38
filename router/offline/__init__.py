"""Offline commands over data files: train, evaluate, policy simulate/explain, stats."""
