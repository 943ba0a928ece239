"""Persistence of sweeps: SQLAlchemy 2 models, the engine, and Alembic migrations."""
