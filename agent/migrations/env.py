"""Alembic environment of the agent database (see dbschema/env.py)."""

from agent.db import SCHEMA
from dbschema.env import run

run(SCHEMA)
