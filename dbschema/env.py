"""What every migrations/env.py runs: the Alembic environment of one schema, on the connection
`dbschema.upgrade` hands over, or on `-x url=...` from the alembic command line."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, TypeDecorator

from dbschema import Schema, create_database_engine


def _plain_types(kind: str, item: object, _context: object) -> str | bool:
    """Autogenerate writes SQLModel's column types (AutoString, UTCDateTime) as the SQLAlchemy
    types they store, so revisions import nothing but sqlalchemy."""
    if kind == "type" and isinstance(item, TypeDecorator):
        return f"sa.{item.impl!r}"
    return False


def _migrate(connection: Connection, schema: Schema) -> None:
    context.configure(
        connection=connection,
        target_metadata=schema.metadata,
        version_table=schema.version_table,
        include_name=schema.owns,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying tables
        compare_type=True,
        render_item=_plain_types,
    )
    with context.begin_transaction():
        context.run_migrations()


def run(schema: Schema) -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection, schema)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("give the database: alembic ... -x url=sqlite:///path/to/db")
    with create_database_engine(url).connect() as connection:
        _migrate(connection, schema)
        connection.commit()
