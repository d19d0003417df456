"""touches.rung_arm: the rung arm of a touch at a step with its own holdout

``holdout`` (the step is skipped for this user, who goes on) or ``treatment``; NULL for a
step without a rung holdout and for rows written before this revision.

Revision ID: c3e1f7a2b9d4
Revises: a76fb9063848
Create Date: 2026-12-03 14:30:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = 'c3e1f7a2b9d4'
down_revision: str | None = 'a76fb9063848'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('touches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rung_arm', sqlmodel.sql.sqltypes.AutoString(length=16),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('touches', schema=None) as batch_op:
        batch_op.drop_column('rung_arm')
