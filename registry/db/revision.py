"""The Alembic revision this code expects (a test checks it equals the migrations' head). Its own module so the
read path can check it without importing SQLAlchemy."""

SCHEMA_REVISION = "0006_api_tokens"
