"""The site's Flower ClientApp: a thin shim over the installed agent.

It answers every message type itself (an unknown one is refused with a code rather than
Flower's error text), reads and writes only the agent's database, and returns integers only.
The SuperNode passes the site config's path as node config `site-config`.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from sqlalchemy import Engine

from agent.config import load_site_config
from agent.db import open_database
from agent.site import handle_message
from coordinator.protocol import RECORD_KEY, Code, Reply, Status, encode_reply

log = logging.getLogger(__name__)


@cache
def _site_engine(config_path: str) -> Engine:
    return open_database(load_site_config(Path(config_path)).database_url)


def answer(message: Message, context: Context) -> Message:
    """The reply to any coordinator message, built from the local database."""
    try:
        engine = _site_engine(str(context.node_config["site-config"]))
        content = message.content
        record = dict(content[RECORD_KEY]) if RECORD_KEY in content.config_records else {}
        payload = handle_message(engine, message.metadata.message_type, record)
    except Exception:
        log.exception("cannot answer %s", message.metadata.message_type)
        payload = encode_reply(Reply(Status.FAILED, Code.INTERNAL_ERROR))
    return Message(RecordDict({RECORD_KEY: ConfigRecord(payload)}), reply_to=message)


class SiteClientApp(ClientApp):
    """A ClientApp whose one handler answers every message type."""

    def __call__(self, message: Message, context: Context) -> Message:
        return answer(message, context)


app = SiteClientApp()
