"""API tokens for ``ctpreg serve``: one row per token, holding the sha256 of its secret (never the secret), its scope
(read, publish, admin), who created it, and when it expires or was revoked.

Revision ID: 0006_api_tokens
Revises: 0005_prompt_targets
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_api_tokens"
down_revision = "0005_prompt_targets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("public_id"),
    )


def downgrade() -> None:
    op.drop_table("api_token")
