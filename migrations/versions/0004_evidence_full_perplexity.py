"""Evidence may carry the uncompressed model's perplexity on the same windows, so a report draws the reference the
recovery is measured against from the very windows it measured (nullable: a checkpoint validated without its base
model has none, and older rows have none).

Revision ID: 0004_evidence_full_perplexity
Revises: 0003_evidence_identity
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_evidence_full_perplexity"
down_revision = "0003_evidence_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transfer_result") as batch:
        batch.add_column(sa.Column("ppl_full", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("transfer_result") as batch:
        batch.drop_column("ppl_full")
