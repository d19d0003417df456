"""delivery state machine in send_batches; lease and reservation indexes

A batch carries its own attempts, next attempt time and lease, so a retry of any length
lives in the database rather than in a broker countdown. Indexes: the tick reclaims
expired enrollment leases and claims batches due for an attempt; a caps rebuild reads
reservations by time.

Revision ID: a76fb9063848
Revises: 0b15bdc46460
Create Date: 2026-12-03 09:47:40.176025
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import orchestrator.store.types


revision: str = 'a76fb9063848'
down_revision: str | None = '0b15bdc46460'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.create_index('ix_enrollments_lease', ['lease_until'], unique=False)

    with op.batch_alter_table('send_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unanswered', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('next_attempt_at', orchestrator.store.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('lease_until', orchestrator.store.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('lease_token', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.add_column(sa.Column('first_attempt_at', orchestrator.store.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_send_batches_awaiting', ['channel', 'confirmed_at'], unique=False)
        batch_op.create_index('ix_send_batches_due', ['state', 'next_attempt_at'], unique=False)

    with op.batch_alter_table('touches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_touches_reserved_at'), ['reserved_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('touches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_touches_reserved_at'))

    with op.batch_alter_table('send_batches', schema=None) as batch_op:
        batch_op.drop_index('ix_send_batches_due')
        batch_op.drop_index('ix_send_batches_awaiting')
        batch_op.drop_column('first_attempt_at')
        batch_op.drop_column('lease_token')
        batch_op.drop_column('lease_until')
        batch_op.drop_column('next_attempt_at')
        batch_op.drop_column('unanswered')

    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.drop_index('ix_enrollments_lease')
