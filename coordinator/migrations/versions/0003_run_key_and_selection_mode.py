"""Run key and selection mode (revision 0003, 2026-12-02).

One name for a run's key, and the selection's mode named as such: federated_run.name -> run_key
and .mode -> selection_mode; run_name -> run_key in run_site, comparison_result and round_log
(their indexes renamed with them); the keys `name` and `mode` of the settings recorded with each
run -> `run_key` and `selection_mode`, as RunSettings names them.
Batch mode: SQLite rebuilds each table with every row; PostgreSQL renames in place.
"""

from alembic import op

revision, down_revision = "0003", "0002"

KEYED = ("run_site", "comparison_result", "round_log")
SETTINGS_KEYS = (('"name":', '"run_key":'), ('"mode":', '"selection_mode":'))


def _rename(renames: dict[str, str], keys: tuple[tuple[str, str], ...]) -> None:
    with op.batch_alter_table("federated_run") as batch_op:
        for old, new in renames.items():
            batch_op.alter_column(old, new_column_name=new)
    for old, new in keys:  # json.dumps writes each key once, as `"key": value`
        op.execute(f"UPDATE federated_run SET settings = REPLACE(settings, '{old}', '{new}')")
    old_key, new_key = ("run_name", "run_key") if "name" in renames else ("run_key", "run_name")
    for table in KEYED:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_index(f"ix_{table}_{old_key}")
            batch_op.alter_column(old_key, new_column_name=new_key)
        op.create_index(f"ix_{table}_{new_key}", table, [new_key])


def upgrade() -> None:
    _rename({"name": "run_key", "mode": "selection_mode"}, SETTINGS_KEYS)


def downgrade() -> None:
    _rename(
        {"run_key": "name", "selection_mode": "mode"},
        tuple((new, old) for old, new in SETTINGS_KEYS),
    )
