"""A test-only revision on top of the store's newest: tasks.custom_id becomes NOT NULL (a column
change SQLite can only make by copying the table, which batch mode does).

Revision ID: t001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.orchestrator.store.migrations import head

revision = "t001"
down_revision = head()  # whatever the store's newest is, so a new store revision does not fork this one
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE tasks SET custom_id = '' WHERE custom_id IS NULL")
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("custom_id", existing_type=sa.String(128), nullable=False, server_default="")


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("custom_id", existing_type=sa.String(128), nullable=True, server_default=None)
