"""Evidence names what was measured: the target's identity and the evaluation data's identity.

Rows recorded before this revision keep their figures and are labelled ``legacy`` (target: a ctpreg-compressed
model of that spec, calibration unknown) and ``legacy:<eval_dataset>`` (windows unknown), so they are never taken
for a measurement on a user's checkpoint or on other windows.

Revision ID: 0003_evidence_identity
Revises: 0002_prompt_recovery
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_evidence_identity"
down_revision = "0002_prompt_recovery"
branch_labels = None
depends_on = None

_result = sa.table("transfer_result", sa.column("eval_dataset", sa.String), sa.column("eval_key", sa.String))


def upgrade() -> None:
    with op.batch_alter_table("transfer_result") as batch:
        batch.add_column(sa.Column("target_key", sa.String(length=80), nullable=False, server_default="legacy"))
        batch.add_column(sa.Column("target_source", sa.String(length=1024), nullable=True))
        batch.add_column(sa.Column("eval_key", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("eval_data", sa.JSON(), nullable=True))
    op.execute(_result.update().values(eval_key=sa.literal("legacy:") + _result.c.eval_dataset))
    with op.batch_alter_table("transfer_result") as batch:
        batch.alter_column("eval_key", existing_type=sa.String(length=300), nullable=False)
        batch.alter_column("target_key", existing_type=sa.String(length=80), server_default=None)
        batch.drop_index("ix_transfer_target")
        batch.create_index("ix_transfer_target", ["target_model_id", "target_compression", "target_key"])


def downgrade() -> None:
    # The older code would take a measurement on one user's checkpoint or in-memory model for evidence about every
    # model of that spec; such rows cannot be expressed without these columns, so they go.
    target_key = sa.column("target_key", sa.String)
    op.execute(
        sa.table("transfer_result", target_key).delete().where(
            sa.or_(target_key.like("checkpoint:%"), target_key.like("memory:%"))
        )
    )
    with op.batch_alter_table("transfer_result") as batch:
        batch.drop_index("ix_transfer_target")
        batch.create_index("ix_transfer_target", ["target_model_id", "target_compression"])
        batch.drop_column("eval_data")
        batch.drop_column("eval_key")
        batch.drop_column("target_source")
        batch.drop_column("target_key")
