"""The coordinator database as it was before Alembic managed it (pandalm-fed 0.1.0).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "federated_run",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("mode", sa.String(), nullable=False),
        sa.Column("config_ids", sa.String(), nullable=False),
        sa.Column("params", sa.String(), nullable=False),
        sa.Column("settings", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("aggregation", sa.String(), nullable=False),
        sa.Column("best_index", sa.Integer(), nullable=True),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "run_site",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_name", sa.String(), nullable=False),
        sa.Column("node_id", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_name", "node_id"),
    )
    op.create_index("ix_run_site_run_name", "run_site", ["run_name"])
    op.create_table(
        "comparison_result",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_name", sa.String(), nullable=False),
        sa.Column("a", sa.Integer(), nullable=False),
        sa.Column("b", sa.Integer(), nullable=False),
        sa.Column("item_start", sa.Integer(), nullable=False),
        sa.Column("item_stop", sa.Integer(), nullable=False),
        sa.Column("win", sa.Integer(), nullable=False),
        sa.Column("tie", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Integer(), nullable=False),
        sa.Column("invalid", sa.Integer(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("sites", sa.Integer(), nullable=False),
        sa.Column("secure", sa.Boolean(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("recorded", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_name", "a", "b", "item_start", "item_stop"),
    )
    op.create_index("ix_comparison_result_run_name", "comparison_result", ["run_name"])
    op.create_table(
        "round_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_name", sa.String(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("message_type", sa.String(), nullable=False),
        sa.Column("comparisons", sa.Integer(), nullable=False),
        sa.Column("answered", sa.Integer(), nullable=False),
        sa.Column("pending", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("bytes_in", sa.Integer(), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_round_log_run_name", "round_log", ["run_name"])


def downgrade() -> None:
    for table in ("round_log", "comparison_result", "run_site"):
        op.drop_index(f"ix_{table}_run_name", table_name=table)
        op.drop_table(table)
    op.drop_table("federated_run")
