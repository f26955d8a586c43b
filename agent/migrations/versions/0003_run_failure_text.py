"""Run failure text (revision 0003, 2026-12-05).

site_run.error: why a run failed, in words naming file, line and field (`pandalm-agent status`
shows it; only site_run.error_code is sent). Existing rows get "".
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0003", "0002"


def upgrade() -> None:
    with op.batch_alter_table("site_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("error", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("site_run", schema=None) as batch_op:
        batch_op.drop_column("error")
