"""initial schema: fleet, windows, configuration versions, journal, alerts, tuning runs

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 18:39:56.598538
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('alerts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('alertname', sa.String(length=128), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=True),
    sa.Column('model', sa.String(length=128), nullable=True),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('annotations', sa.JSON(), nullable=False),
    sa.Column('starts_at', sa.String(length=64), nullable=True),
    sa.Column('ends_at', sa.String(length=64), nullable=True),
    sa.Column('handled', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alerts_received_at'), ['received_at'], unique=False)

    op.create_table('servers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('grpc_url', sa.String(length=256), nullable=False),
    sa.Column('metrics_url', sa.String(length=256), nullable=False),
    sa.Column('managed', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_servers')),
    sa.UniqueConstraint('name', name=op.f('uq_servers_name'))
    )
    op.create_table('tuning_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_name', sa.String(length=128), nullable=False),
    sa.Column('optuna_storage', sa.String(length=512), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=False),
    sa.Column('ended_at', sa.Float(), nullable=True),
    sa.Column('budget', sa.Integer(), nullable=False),
    sa.Column('window_s', sa.Float(), nullable=False),
    sa.Column('models', sa.JSON(), nullable=False),
    sa.Column('best', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tuning_runs')),
    sa.UniqueConstraint('study_name', name=op.f('uq_tuning_runs_study_name'))
    )
    op.create_table('device_windows',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('server_id', sa.Integer(), nullable=True),
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('source', sa.String(length=8), nullable=False),
    sa.Column('start', sa.Float(), nullable=False),
    sa.Column('end', sa.Float(), nullable=False),
    sa.Column('resolution_s', sa.Float(), nullable=False),
    sa.Column('utilization', sa.Float(), nullable=True),
    sa.Column('memory_used_bytes', sa.Float(), nullable=True),
    sa.Column('memory_total_bytes', sa.Float(), nullable=True),
    sa.Column('power_w', sa.Float(), nullable=True),
    sa.Column('processes', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['server_id'], ['servers.id'], name=op.f('fk_device_windows_server_id_servers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device_windows'))
    )
    with op.batch_alter_table('device_windows', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_windows_device_end'), ['device', 'end'], unique=False)

    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('server_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('sla_metric', sa.String(length=32), nullable=True),
    sa.Column('sla_target_ms', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['server_id'], ['servers.id'], name=op.f('fk_models_server_id_servers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models')),
    sa.UniqueConstraint('name', name=op.f('uq_models_name'))
    )
    op.create_table('config_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('knobs', sa.JSON(), nullable=False),
    sa.Column('actor', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('applied_at', sa.Float(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_config_versions_model_id_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_config_versions'))
    )
    with op.batch_alter_table('config_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_config_versions_model_id'), ['model_id'], unique=False)

    op.create_table('metric_windows',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('start', sa.Float(), nullable=False),
    sa.Column('end', sa.Float(), nullable=False),
    sa.Column('resolution_s', sa.Float(), nullable=False),
    sa.Column('config_version_id', sa.Integer(), nullable=True),
    sa.Column('spans_reconfiguration', sa.Boolean(), nullable=False),
    sa.Column('reset', sa.Boolean(), nullable=False),
    sa.Column('requests', sa.Float(), nullable=False),
    sa.Column('success', sa.Float(), nullable=False),
    sa.Column('failures', sa.JSON(), nullable=False),
    sa.Column('request_rate', sa.Float(), nullable=False),
    sa.Column('inference_rate', sa.Float(), nullable=False),
    sa.Column('avg_batch', sa.Float(), nullable=True),
    sa.Column('avg_request_ms', sa.Float(), nullable=True),
    sa.Column('avg_queue_ms', sa.Float(), nullable=True),
    sa.Column('avg_compute_input_ms', sa.Float(), nullable=True),
    sa.Column('avg_compute_infer_ms', sa.Float(), nullable=True),
    sa.Column('avg_compute_output_ms', sa.Float(), nullable=True),
    sa.Column('p50_ms', sa.Float(), nullable=True),
    sa.Column('p90_ms', sa.Float(), nullable=True),
    sa.Column('p99_ms', sa.Float(), nullable=True),
    sa.Column('ttft_p50_ms', sa.Float(), nullable=True),
    sa.Column('ttft_p99_ms', sa.Float(), nullable=True),
    sa.Column('ttft_source', sa.String(length=16), nullable=True),
    sa.Column('pending', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['config_version_id'], ['config_versions.id'], name=op.f('fk_metric_windows_config_version_id_config_versions')),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_metric_windows_model_id_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_metric_windows'))
    )
    with op.batch_alter_table('metric_windows', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_metric_windows_config_version_id'), ['config_version_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_metric_windows_model_id_end'), ['model_id', 'end'], unique=False)

    op.create_table('reconfiguration_journal',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('config_version_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.Column('path', sa.String(length=16), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['config_version_id'], ['config_versions.id'], name=op.f('fk_reconfiguration_journal_config_version_id_config_versions')),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_reconfiguration_journal_model_id_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reconfiguration_journal'))
    )
    with op.batch_alter_table('reconfiguration_journal', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reconfiguration_journal_config_version_id'), ['config_version_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('reconfiguration_journal', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reconfiguration_journal_config_version_id'))

    op.drop_table('reconfiguration_journal')
    with op.batch_alter_table('metric_windows', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_metric_windows_model_id_end'))
        batch_op.drop_index(batch_op.f('ix_metric_windows_config_version_id'))

    op.drop_table('metric_windows')
    with op.batch_alter_table('config_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_config_versions_model_id'))

    op.drop_table('config_versions')
    op.drop_table('models')
    with op.batch_alter_table('device_windows', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_device_windows_device_end'))

    op.drop_table('device_windows')
    op.drop_table('tuning_runs')
    op.drop_table('servers')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alerts_received_at'))

    op.drop_table('alerts')
