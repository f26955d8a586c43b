"""Run ends and summed sites (revision 0004, 2026-12-05).

federated_run.reason: why a failed or stopped run ended. run_site.code: the protocol code that
left a site out (0: none, or silence). comparison_result.contributors: a JSON list of the node
ids whose tallies are in the sum; comparisons recorded before this revision get "[]" (unknown).
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0004", "0003"


def upgrade() -> None:
    with op.batch_alter_table("comparison_result", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("contributors", sa.String(), nullable=False, server_default="[]")
        )
    with op.batch_alter_table("federated_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reason", sa.String(), nullable=False, server_default=""))
    with op.batch_alter_table("run_site", schema=None) as batch_op:
        batch_op.add_column(sa.Column("code", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("run_site", schema=None) as batch_op:
        batch_op.drop_column("code")
    with op.batch_alter_table("federated_run", schema=None) as batch_op:
        batch_op.drop_column("reason")
    with op.batch_alter_table("comparison_result", schema=None) as batch_op:
        batch_op.drop_column("contributors")
