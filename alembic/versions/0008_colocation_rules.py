"""co-location rules learned live (or told by a person), which the packing planner respects

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 17:55:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'colocation_rules',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('model_a', sa.String(length=128), nullable=False),
        sa.Column('model_b', sa.String(length=128), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('summary', sa.Text(), nullable=False),
        sa.Column('evidence', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_colocation_rules')),
        sa.UniqueConstraint('model_a', 'model_b', name=op.f('uq_colocation_rules_model_a_model_b')),
    )


def downgrade() -> None:
    op.drop_table('colocation_rules')
