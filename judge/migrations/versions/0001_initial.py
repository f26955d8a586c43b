"""The judgment cache as it was before Alembic managed it (pandalm-fed 0.1.0)."""

from dbschema.frozen import frozen_revision

revision, down_revision = "0001", None
upgrade, downgrade = frozen_revision(__file__)
