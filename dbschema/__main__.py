"""Developer tool: write a schema's next Alembic revision from what its models have and its
migrations lack (Alembic autogenerate against a scratch SQLite database at the current head).

python -m dbschema revision agent|coordinator|judge -m "what changed"

Review the file it writes (autogenerate cannot tell a rename from a drop and an add, and a new
NOT NULL column on a filled table needs a server_default) and commit it with the model change.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile

from alembic import command

from dbschema import alembic_config, create_database_engine, head, upgrade

SCHEMAS = {"agent": "agent.db", "coordinator": "coordinator.db", "judge": "judge.cache"}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dbschema", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["revision"])
    parser.add_argument("schema", choices=sorted(SCHEMAS))
    parser.add_argument("-m", "--message", required=True)
    args = parser.parse_args()
    schema = importlib.import_module(SCHEMAS[args.schema]).SCHEMA
    with tempfile.TemporaryDirectory() as folder:
        engine = create_database_engine(f"sqlite:///{folder}/head.sqlite")
        upgrade(engine, schema)
        with engine.begin() as connection:
            script = command.revision(
                alembic_config(schema, connection),
                message=args.message,
                autogenerate=True,
                rev_id=f"{int(head(schema)) + 1:04d}",
            )
    print(script.path)


if __name__ == "__main__":
    main()
