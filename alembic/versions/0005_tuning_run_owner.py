"""tuning runs record their owner and a heartbeat, so a run whose process died is interrupted at start-up

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('tuning_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('warmup_s', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('owner', sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column('owned_since', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tuning_runs', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('owned_since')
        batch_op.drop_column('owner')
        batch_op.drop_column('warmup_s')
