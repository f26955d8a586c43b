"""Alembic environment of the coordinator database (see dbschema/env.py)."""

from coordinator.db import SCHEMA
from dbschema.env import run

run(SCHEMA)
