"""Initial schema: base_model, prompt, alias, transfer_result.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "base_model",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("fingerprint", sa.String(length=71), nullable=False),
        sa.Column("architecture", sa.String(length=128), nullable=True),
        sa.Column("hidden_size", sa.Integer(), nullable=False),
        sa.Column("vocab_size", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=1024), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("name"),
    )
    op.create_index("ix_base_model_fingerprint", "base_model", ["fingerprint"])
    op.create_table(
        "prompt",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("base_model_id", sa.Integer(), sa.ForeignKey("base_model.id"), nullable=False),
        sa.Column("compression", sa.String(length=128), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("bits", sa.Integer(), nullable=True),
        sa.Column("sparsity", sa.Float(), nullable=True),
        sa.Column("group_size", sa.Integer(), nullable=True),
        sa.Column("dataset", sa.String(length=256), nullable=False),
        sa.Column("task", sa.String(length=256), nullable=True),
        sa.Column("num_virtual_tokens", sa.Integer(), nullable=False),
        sa.Column("hidden_size", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("object_key", sa.String(length=256), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("training", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("deprecated", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_prompt_name_version"),
        sa.UniqueConstraint("name", "sha256", name="uq_prompt_name_sha256"),
    )
    op.create_index("ix_prompt_model_method_bits", "prompt", ["base_model_id", "method", "bits"])
    op.create_index("ix_prompt_sha256", "prompt", ["sha256"])
    op.create_table(
        "alias",
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("prompt_id", sa.Integer(), sa.ForeignKey("prompt.id"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", "alias"),
    )
    op.create_table(
        "transfer_result",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("prompt_id", sa.Integer(), sa.ForeignKey("prompt.id"), nullable=False),
        sa.Column("target_model_id", sa.Integer(), sa.ForeignKey("base_model.id"), nullable=False),
        sa.Column("target_compression", sa.String(length=128), nullable=False),
        sa.Column("eval_dataset", sa.String(length=256), nullable=False),
        sa.Column("eval_tokens", sa.Integer(), nullable=False),
        sa.Column("ppl_without", sa.Float(), nullable=False),
        sa.Column("ppl_with", sa.Float(), nullable=False),
        sa.Column("relative_gain", sa.Float(), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_transfer_result_prompt_id", "transfer_result", ["prompt_id"])
    op.create_index("ix_transfer_target", "transfer_result", ["target_model_id", "target_compression"])


def downgrade() -> None:
    op.drop_index("ix_transfer_target", table_name="transfer_result")
    op.drop_index("ix_transfer_result_prompt_id", table_name="transfer_result")
    op.drop_table("transfer_result")
    op.drop_table("alias")
    op.drop_index("ix_prompt_sha256", table_name="prompt")
    op.drop_index("ix_prompt_model_method_bits", table_name="prompt")
    op.drop_table("prompt")
    op.drop_index("ix_base_model_fingerprint", table_name="base_model")
    op.drop_table("base_model")
