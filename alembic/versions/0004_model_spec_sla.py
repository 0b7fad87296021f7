"""models remember the spec's SLA, so a person's SLA survives a restart

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 05:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('spec_sla_metric', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('spec_sla_target_ms', sa.Float(), nullable=True))
    # What the store holds came from the spec until now: it is the spec's SLA as last seen.
    op.execute("UPDATE models SET spec_sla_metric = sla_metric, spec_sla_target_ms = sla_target_ms")


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_column('spec_sla_target_ms')
        batch_op.drop_column('spec_sla_metric')
