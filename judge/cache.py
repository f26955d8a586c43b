"""On-disk judgment cache: a row per (judge identity, mode, settings, prompt); reruns are free."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Field, Session, SQLModel, create_engine, select


class CachedJudgment(SQLModel, table=True):
    """The raw outcome of judging one prompt (one order of one pair)."""

    __tablename__ = "cached_judgment"
    key: str = Field(primary_key=True)
    payload: str


def judgment_key(identity: str, mode: str, settings: str, prompt: str) -> str:
    material = json.dumps([identity, mode, settings, prompt], ensure_ascii=False)
    return hashlib.sha256(material.encode()).hexdigest()


class JudgmentCache:
    """A SQLite (or any SQLAlchemy URL) store of per-order judge outputs."""

    def __init__(self, location: Path | str) -> None:
        url = str(location) if "://" in str(location) else f"sqlite:///{location}"
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url)
        SQLModel.metadata.create_all(self.engine, tables=[CachedJudgment.__table__])

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        if not keys:
            return {}
        with Session(self.engine) as session:
            rows = session.exec(select(CachedJudgment).where(CachedJudgment.key.in_(keys)))
            return {row.key: json.loads(row.payload) for row in rows}

    def put_many(self, entries: dict[str, dict]) -> None:
        with Session(self.engine) as session:
            for key, value in entries.items():
                session.merge(CachedJudgment(key=key, payload=json.dumps(value)))
            session.commit()
