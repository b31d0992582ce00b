"""Alembic migrations; each revision's SQL sits beside it in versions/."""
