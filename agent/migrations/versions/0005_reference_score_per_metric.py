"""Reference score per metric (revision 0005, 2026-12-05).

A config may have several reference metrics (exact match and the dense answer NLL on checkable
items), so reference_score's unique key (run_key, config_id) becomes (run_key, config_id,
metric). Revision 0001 left the key unnamed: PostgreSQL named it itself; on SQLite the batch
copy names the reflected one through a naming convention so that it can be dropped.
"""

from alembic import op

revision, down_revision = "0005", "0004"

TABLE = "reference_score"
NAMING = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}
OLD = ("run_key", "config_id")
NEW = ("run_key", "config_id", "metric")


def _name(columns: tuple[str, ...]) -> str:
    """The key's name: PostgreSQL's own for revision 0001's unnamed key, else the convention's."""
    if op.get_bind().dialect.name == "postgresql" and columns == OLD:
        return f"{TABLE}_{'_'.join(columns)}_key"
    return f"uq_{TABLE}_{'_'.join(columns)}"


def _replace_key(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    with op.batch_alter_table(TABLE, naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(_name(old), type_="unique")
        batch_op.create_unique_constraint(_name(new), list(new))


def upgrade() -> None:
    _replace_key(OLD, NEW)


def downgrade() -> None:
    _replace_key(NEW, OLD)
