"""Benchmarks: what agentstream adds to a token's journey, measured beside the floor in one run."""
