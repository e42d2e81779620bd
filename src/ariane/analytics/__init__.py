"""Batch analytics over the whole population: pure computation, fed by the services."""
