"""Every Flower name the coordinator uses from outside Flower's public API, in one place.

SecAgg+ exists in Flower 1.42 only as a legacy workflow (coordinator/secure_sum.py): it needs a
client proxy per site over the grid and the workflow's state keys. The test double of the grid
sets the task identity the ServerApp runtime sets, and the deploy test reads the SuperLink's
API prefixes that deploy/nginx/fleet-only.conf filters on. None of these names is in a public
`__all__` of flwr, so a Flower upgrade may move or change them: tests/test_flower_internals.py
imports each one and checks the signatures and values used, so an upgrade fails there first.
Public names (flwr.app, flwr.serverapp, flwr.server, flwr.common) are imported directly.
"""

from __future__ import annotations

from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.supercore.task_identity import TaskIdentity

__all__ = [
    "MAIN_CONFIGS_RECORD",
    "MAIN_PARAMS_RECORD",
    "ClientProxy",
    "GridClientProxy",
    "TaskIdentity",
    "WorkflowKey",
    "superlink_api_prefixes",
]


def superlink_api_prefixes() -> dict[str, str]:
    """The URL prefixes of the SuperLink's Fleet, Control and runtime APIs (imported on demand:
    the routers pull in the SuperLink's web stack)."""
    from flwr.supercore.routers.runtime.router import router as runtime
    from flwr.superlink.routers.control.router import router as control
    from flwr.superlink.routers.fleet.router import router as fleet

    return {"fleet": fleet.prefix, "control": control.prefix, "runtime": runtime.prefix}
