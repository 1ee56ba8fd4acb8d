"""Alembic migrations of the account store (SQLite and PostgreSQL alike); run by store/migrate.py.

A new schema change is a new file in versions/ (`alembic revision` with this folder as the
script location, or by hand after 0001's model), never an edit of an old one."""
