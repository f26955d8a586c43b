"""Every Flower name the site uses from outside Flower's public API, in one place.

The app guard (agent/guard.py) speaks the SuperNode's runtime API as Flower's own SuperExec and
`flwr-clientapp` do; the ClientApp (agent/client_app.py) runs SecAgg+ stages and builds the
legacy fit reply the SecAgg+ workflow expects. None of these names is in a public `__all__` of
flwr, so a Flower upgrade may move or change them: tests/test_flower_internals.py imports each
one and checks the signatures and fields used here, so an upgrade fails there first, by name.
Public names (flwr.app, flwr.clientapp, flwr.client.mod, flwr.common) are imported directly.
"""

from __future__ import annotations

from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggPlusKey
from flwr.compat.common.recorddict_compat import fitres_to_recorddict
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

__all__ = [
    "RECORD_KEY_CONFIGS",
    "AcquireTaskRequest",
    "ErrorCode",
    "RuntimeHttpClient",
    "RuntimeTokenHttpInterceptor",
    "RuntimeVersionHttpInterceptor",
    "SecAggPlusKey",
    "SubStatus",
    "TaskType",
    "build_fab_from_disk",
    "fitres_to_recorddict",
    "make_simple_http_retry_invoker",
    "pull_task_input",
    "push_message",
    "push_task_output",
]
