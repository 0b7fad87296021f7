"""windows record where their latency quantiles come from

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 19:29:37.049250
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('metric_windows', schema=None) as batch_op:
        batch_op.add_column(sa.Column('latency_source', sa.String(length=16), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('metric_windows', schema=None) as batch_op:
        batch_op.drop_column('latency_source')

