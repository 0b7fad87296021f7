"""the SLO controller's journal, its incumbent per traffic regime and its trials

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 08:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'controller_actions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('mode', sa.String(length=16), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('model', sa.String(length=128), nullable=True),
        sa.Column('rung', sa.String(length=32), nullable=True),
        sa.Column('regime', sa.String(length=512), nullable=True),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('window_start', sa.Float(), nullable=True),
        sa.Column('window_end', sa.Float(), nullable=True),
        sa.Column('changes', sa.JSON(), nullable=False),
        sa.Column('applied', sa.Boolean(), nullable=False),
        sa.Column('refused', sa.Text(), nullable=True),
        sa.Column('before_ratio', sa.Float(), nullable=True),
        sa.Column('after_ratio', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_controller_actions')),
    )
    op.create_index(op.f('ix_controller_actions_at'), 'controller_actions', ['at'], unique=False)
    op.create_table(
        'regime_configs',
        sa.Column('regime', sa.String(length=512), nullable=False),
        sa.Column('knobs', sa.JSON(), nullable=False),
        sa.Column('goodput', sa.Float(), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('regime', name=op.f('pk_regime_configs')),
    )
    op.create_table(
        'controller_trials',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('regime', sa.String(length=512), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('what', sa.String(length=256), nullable=False),
        sa.Column('knobs', sa.JSON(), nullable=False),
        sa.Column('safe', sa.Boolean(), nullable=False),
        sa.Column('goodput', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_controller_trials')),
    )
    op.create_index(op.f('ix_controller_trials_regime'), 'controller_trials', ['regime'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_controller_trials_regime'), table_name='controller_trials')
    op.drop_table('controller_trials')
    op.drop_table('regime_configs')
    op.drop_index(op.f('ix_controller_actions_at'), table_name='controller_actions')
    op.drop_table('controller_actions')
