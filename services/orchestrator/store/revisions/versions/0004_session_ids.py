"""tasks.session_id, usage.session_id: 128 characters, as the API allows

``ExecutionRequest.session_id`` is an ``Id`` (at most 128 characters) but these columns held 40:
PostgreSQL refused a longer one (SQLite does not check lengths). A type change: on SQLite the batch
copies each table.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("tasks", "usage"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column("session_id", existing_type=sa.String(40), type_=sa.String(128), existing_nullable=True)


def downgrade() -> None:
    for table in ("tasks", "usage"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column("session_id", existing_type=sa.String(128), type_=sa.String(40), existing_nullable=True)
