"""an SLA is judged over a rolling window against an objective (the fraction of requests within target)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The defaults of `domain.spec.Sla` when this revision was written (a migration must not follow
# later changes of the code): every SLA stored before it was judged this way.
WINDOW_S = 60.0
OBJECTIVE = 0.99


def upgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sla_window_s', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('sla_objective', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('spec_sla_window_s', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('spec_sla_objective', sa.Float(), nullable=True))
    # A spec without the new fields means the defaults: record them as the spec's, so the first
    # start after the upgrade does not take an unchanged spec for a changed one (and overwrite an
    # SLA a person set through the API).
    op.execute(
        f"UPDATE models SET sla_window_s = {WINDOW_S}, sla_objective = {OBJECTIVE} "
        "WHERE sla_metric IS NOT NULL"
    )
    op.execute(
        f"UPDATE models SET spec_sla_window_s = {WINDOW_S}, spec_sla_objective = {OBJECTIVE} "
        "WHERE spec_sla_metric IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_column('spec_sla_objective')
        batch_op.drop_column('spec_sla_window_s')
        batch_op.drop_column('sla_objective')
        batch_op.drop_column('sla_window_s')
