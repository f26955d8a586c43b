"""The agent database as it was before Alembic managed it (pandalm-fed 0.1.0).

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
        "site_run",
        sa.Column("run_key", sa.String(), nullable=False),
        sa.Column("space_hash", sa.String(), nullable=False),
        sa.Column("config_ids", sa.String(), nullable=False),
        sa.Column("params", sa.String(), nullable=False),
        sa.Column("validation_items", sa.Integer(), nullable=False),
        sa.Column("judge_mode", sa.String(), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=False),
        sa.Column("training_seconds", sa.Float(), nullable=False),
        sa.Column("generation_seconds", sa.Float(), nullable=False),
        sa.Column("epsilon_spent", sa.Float(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_key"),
    )
    op.create_table(
        "comparison_job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_key", sa.String(), nullable=False),
        sa.Column("a_id", sa.String(), nullable=False),
        sa.Column("b_id", sa.String(), nullable=False),
        sa.Column("item_start", sa.Integer(), nullable=False),
        sa.Column("item_stop", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=False),
        sa.Column("win", sa.Integer(), nullable=False),
        sa.Column("tie", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Integer(), nullable=False),
        sa.Column("invalid", sa.Integer(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("judging_seconds", sa.Float(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_key", "a_id", "b_id", "item_start", "item_stop"),
    )
    op.create_index("ix_comparison_job_run_key", "comparison_job", ["run_key"])
    op.create_table(
        "item_judgment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_key", sa.String(), nullable=False),
        sa.Column("a_id", sa.String(), nullable=False),
        sa.Column("b_id", sa.String(), nullable=False),
        sa.Column("item_id", sa.String(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=False),
        sa.Column("detail", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_key", "a_id", "b_id", "item_id"),
    )
    op.create_index("ix_item_judgment_run_key", "item_judgment", ["run_key"])
    op.create_table(
        "reference_score",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_key", sa.String(), nullable=False),
        sa.Column("config_id", sa.String(), nullable=False),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_key", "config_id"),
    )
    op.create_index("ix_reference_score_run_key", "reference_score", ["run_key"])
    op.create_table(
        "ledger_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_key", sa.String(), nullable=False),
        sa.Column("message_type", sa.String(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("content", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ledger_entry_run_key", "ledger_entry", ["run_key"])


def downgrade() -> None:
    for table in ("ledger_entry", "reference_score", "item_judgment", "comparison_job"):
        op.drop_index(f"ix_{table}_run_key", table_name=table)
        op.drop_table(table)
    op.drop_table("site_run")
