"""windows keep their histogram buckets for exact quantiles over spans

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 19:32:05.420814
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('metric_windows', schema=None) as batch_op:
        batch_op.add_column(sa.Column('latency_buckets', sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column('ttft_buckets', sa.JSON(), nullable=False, server_default=sa.text("'{}'")))



def downgrade() -> None:
    with op.batch_alter_table('metric_windows', schema=None) as batch_op:
        batch_op.drop_column('ttft_buckets')
        batch_op.drop_column('latency_buckets')

