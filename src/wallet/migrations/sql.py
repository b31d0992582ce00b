"""Runs a revision's SQL file, which sits beside it with the same name."""

from pathlib import Path

from alembic import op


def run_sql_beside(revision_file: str) -> None:
    # Straight to the driver with no parameters, so that the SQL's own % and : are left as written.
    with op.get_bind().connection.dbapi_connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(Path(revision_file).with_suffix(".sql").read_text())
