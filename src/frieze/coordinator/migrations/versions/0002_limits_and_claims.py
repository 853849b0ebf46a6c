"""policy limits per host and per repository; schedule claim generations

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_per_host", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_per_repository", sa.Integer(), nullable=True))
    with op.batch_alter_table("schedule_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_no", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("schedule_runs", schema=None) as batch_op:
        batch_op.drop_column("claim_no")
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.drop_column("max_per_repository")
        batch_op.drop_column("max_per_host")
