"""A schema's first revision kept as data: the tables as they were when Alembic took over, in a
JSON file beside the revision (`{table: {columns: {name: type, "?" when nullable}, primary_key,
unique, indexes}}`). Data, not the models: the models move on, the first revision must not."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from alembic import op

COLUMN_TYPES: dict[str, Callable[[], sa.types.TypeEngine]] = {
    "String": sa.String,
    "Integer": sa.Integer,
    "Float": sa.Float,
    "Boolean": sa.Boolean,
    "DateTime": lambda: sa.DateTime(timezone=True),
}


def frozen_revision(revision_file: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """The revision's `upgrade` and `downgrade` from the JSON file of the same name."""
    tables: dict[str, dict] = json.loads(Path(revision_file).with_suffix(".json").read_text())

    def upgrade() -> None:
        for name, table in tables.items():
            columns = [
                sa.Column(column, COLUMN_TYPES[kind.rstrip("?")](), nullable=kind.endswith("?"))
                for column, kind in table["columns"].items()
            ]
            unique = [sa.UniqueConstraint(*names) for names in table.get("unique", [])]
            op.create_table(name, *columns, sa.PrimaryKeyConstraint(*table["primary_key"]), *unique)
            for index, names in table.get("indexes", {}).items():
                op.create_index(index, name, names)

    def downgrade() -> None:
        for name, table in reversed(tables.items()):
            for index in table.get("indexes", {}):
                op.drop_index(index, table_name=name)
            op.drop_table(name)

    return upgrade, downgrade
