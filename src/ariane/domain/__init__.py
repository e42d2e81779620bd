"""Pure domain logic: no I/O, no SQLAlchemy, no FastAPI. Time comes in as an argument."""
