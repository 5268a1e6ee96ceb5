"""The compressions each prompt was trained on, one row each, with its recovery there: what resolve ranks.

A multi-target prompt (one prompt trained across several compressed versions of its base model) is an exact match
for each of them, ranked by its recorded recovery on that very target; a row per (prompt, target) lets the ranking
stay one indexed query. Every existing prompt was trained on one compression: its row is copied from the prompt.
The ranking index moves from ``prompt`` to ``prompt_target``; ``prompt`` keeps the (model, method, bits) index
that listing filters use.

Revision ID: 0005_prompt_targets
Revises: 0004_evidence_full_perplexity
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_prompt_targets"
down_revision = "0004_evidence_full_perplexity"
branch_labels = None
depends_on = None

OLD_RANK_COLUMNS = [
    "base_model_id", "method", "bits", "deprecated", "sparsity", "group_size", "dataset", "task", "recovery", "version",
    "name",
]
COPIED = [
    "base_model_id", "compression", "method", "bits", "sparsity", "group_size", "recovery", "dataset", "task",
    "version", "name", "deprecated",
]


def upgrade() -> None:
    op.create_table(
        "prompt_target",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("prompt_id", sa.Integer(), sa.ForeignKey("prompt.id"), nullable=False),
        sa.Column("base_model_id", sa.Integer(), sa.ForeignKey("base_model.id"), nullable=False),
        sa.Column("compression", sa.String(length=128), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("bits", sa.Integer(), nullable=True),
        sa.Column("sparsity", sa.Float(), nullable=True),
        sa.Column("group_size", sa.Integer(), nullable=True),
        sa.Column("recovery", sa.Float(), nullable=True),
        sa.Column("dataset", sa.String(length=256), nullable=False),
        sa.Column("task", sa.String(length=256), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("deprecated", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("prompt_id", "compression", name="uq_prompt_target"),
    )
    op.create_index("ix_prompt_target_prompt_id", "prompt_target", ["prompt_id"])
    op.create_index("ix_prompt_target_rank", "prompt_target", [*OLD_RANK_COLUMNS, "prompt_id"])
    prompt = sa.table("prompt", sa.column("id"), *(sa.column(name) for name in COPIED))
    target = sa.table("prompt_target", sa.column("prompt_id"), *(sa.column(name) for name in COPIED))
    op.execute(target.insert().from_select(
        ["prompt_id", *COPIED], sa.select(prompt.c.id, *(prompt.c[name] for name in COPIED))
    ))
    op.create_index("ix_prompt_model_method_bits", "prompt", ["base_model_id", "method", "bits"])
    op.drop_index("ix_prompt_rank", table_name="prompt")


def downgrade() -> None:
    op.create_index("ix_prompt_rank", "prompt", OLD_RANK_COLUMNS)
    op.drop_index("ix_prompt_model_method_bits", table_name="prompt")
    op.drop_index("ix_prompt_target_rank", table_name="prompt_target")
    op.drop_index("ix_prompt_target_prompt_id", table_name="prompt_target")
    op.drop_table("prompt_target")
