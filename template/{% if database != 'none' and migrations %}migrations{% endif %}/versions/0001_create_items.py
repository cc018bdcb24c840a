"""Create the items table.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A project that turned migrations on later already has the table its app created at
    # start-up (the same columns): take it as this revision's. Only online: the offline SQL
    # (`--sql`) has no database to look at, and is for one without the table.
    if not context.is_offline_mode() and sa.inspect(op.get_bind()).has_table("items"):
        return
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("items")
