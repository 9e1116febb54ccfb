"""tasks.input_preview and the indexes of the history lists (GET /v1/executions, GET /v1/sessions)

A list of runs is read newest first per tenant: (tenant_id, created_at) on tasks and sessions. The
request's input lives on Kafka only; its first 200 characters are kept so a list says what was asked.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("input_preview", sa.String(200)))
    op.create_index("ix_tasks_tenant_created", "tasks", ["tenant_id", "created_at"])
    op.create_index("ix_sessions_tenant_created", "sessions", ["tenant_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_tenant_created", table_name="sessions")
    op.drop_index("ix_tasks_tenant_created", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("input_preview")
