"""The store: SQLAlchemy 2 (async) tables, the database handle, repositories, Alembic migrations."""
