"""Alembic environment of the judgment cache (see dbschema/env.py)."""

from dbschema.env import run
from judge.cache import SCHEMA

run(SCHEMA)
