"""Use cases over a transaction. They return plain values and raise domain errors."""
