"""Fixtures every test module may use: `db_target` (each test on SQLite and on PostgreSQL) and `pg`
(the session's throwaway PostgreSQL server), from tests/pg_server.py."""

pytest_plugins = ["pg_server"]
