"""Store each prompt's recorded gap recovery in a column and index the ranking columns, so resolve ranks in the DB.

Revision ID: 0002_prompt_recovery
Revises: 0001_initial
Create Date: 2026-11-29
"""

import json
import math

import sqlalchemy as sa
from alembic import op

revision = "0002_prompt_recovery"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

# Every column resolve's head query filters or orders by, so it runs on the index alone.
RANK_COLUMNS = [
    "base_model_id", "method", "bits", "deprecated", "sparsity", "group_size", "dataset", "task", "recovery", "version",
    "name",
]
_prompt = sa.table(
    "prompt", sa.column("id", sa.Integer), sa.column("metrics", sa.JSON), sa.column("recovery", sa.Float)
)


def _recovery(metrics: object) -> float | None:
    """(compressed - prompted) / (compressed - full), as at publish time; None when undefined."""
    if isinstance(metrics, str):
        metrics = json.loads(metrics)
    try:
        full, compressed, prompted = (float(metrics[k]) for k in ("ppl_full", "ppl_compressed", "ppl_prompted"))
    except (KeyError, TypeError, ValueError):
        return None
    gap = compressed - full
    if gap <= 0 or not all(math.isfinite(x) for x in (full, compressed, prompted)):
        return None
    return (compressed - prompted) / gap


def upgrade() -> None:
    with op.batch_alter_table("prompt") as batch:
        batch.add_column(sa.Column("recovery", sa.Float(), nullable=True))
    bind = op.get_bind()
    for row in bind.execute(sa.select(_prompt.c.id, _prompt.c.metrics)).all():
        value = _recovery(row.metrics)
        if value is not None:
            bind.execute(_prompt.update().where(_prompt.c.id == row.id).values(recovery=value))
    op.create_index("ix_prompt_rank", "prompt", RANK_COLUMNS)
    op.drop_index("ix_prompt_model_method_bits", table_name="prompt")


def downgrade() -> None:
    op.create_index("ix_prompt_model_method_bits", "prompt", ["base_model_id", "method", "bits"])
    op.drop_index("ix_prompt_rank", table_name="prompt")
    with op.batch_alter_table("prompt") as batch:
        batch.drop_column("recovery")
