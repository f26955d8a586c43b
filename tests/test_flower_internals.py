"""The Flower names this project uses from outside Flower's public API, checked one by one.

They live in agent/flower_internals.py and coordinator/flower_internals.py. After a Flower
upgrade this file fails first and names what moved or changed: each name imports, each callable
takes the arguments the code passes (positional ones under the same names), and each field and
constant the code reads exists. A scan checks that nothing else imports a non-public name.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest

from agent import flower_internals as site
from coordinator import flower_internals as coordinator

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = {ROOT / "agent" / "flower_internals.py", ROOT / "coordinator" / "flower_internals.py"}
PUBLIC_MODULES = {
    "flwr.app",
    "flwr.client.mod",
    "flwr.clientapp",
    "flwr.common",
    "flwr.server",
    "flwr.server.strategy",
    "flwr.server.workflow",
    "flwr.serverapp",
}
"""Modules whose `__all__` is Flower's public API as this project uses it."""

# (callable, positional parameters as the code passes them, keyword arguments it passes)
CALLS: list[tuple[str, Any, tuple[str, ...], tuple[str, ...]]] = [
    ("build_fab_from_disk", site.build_fab_from_disk, ("app",), ()),
    ("pull_task_input", site.pull_task_input, ("client",), ()),
    ("push_message", site.push_message, ("client", "message", "context"), ()),
    (
        "push_task_output",
        site.push_task_output,
        ("client", "context", "sub_status", "details"),
        (),
    ),
    (
        "RuntimeHttpClient.from_server_address",
        site.RuntimeHttpClient.from_server_address,
        (),
        ("server_address", "insecure", "root_certificates", "interceptors", "retry_invoker"),
    ),
    ("RuntimeVersionHttpInterceptor", site.RuntimeVersionHttpInterceptor, (), ("component_name",)),
    ("RuntimeTokenHttpInterceptor", site.RuntimeTokenHttpInterceptor, ("token",), ()),
    ("make_simple_http_retry_invoker", site.make_simple_http_retry_invoker, (), ()),
    ("AcquireTaskRequest", site.AcquireTaskRequest, (), ("supported_task_types",)),
    ("fitres_to_recorddict", site.fitres_to_recorddict, ("fitres",), ("keep_input",)),
    ("GridClientProxy", coordinator.GridClientProxy, ("node_id", "grid", "run_id"), ()),
]


def _signature(obj: Any) -> inspect.Signature:
    if hasattr(obj, "DESCRIPTOR"):  # a protobuf message takes its fields as keywords
        fields = obj.DESCRIPTOR.fields_by_name
        return inspect.Signature(
            [inspect.Parameter(f, inspect.Parameter.KEYWORD_ONLY, default=None) for f in fields]
        )
    return inspect.signature(obj)


@pytest.mark.parametrize(
    ("name", "obj", "positional", "keywords"), CALLS, ids=[call[0] for call in CALLS]
)
def test_callables_take_the_arguments_the_code_passes(
    name: str, obj: Any, positional: tuple[str, ...], keywords: tuple[str, ...]
) -> None:
    signature = _signature(obj)
    names = list(signature.parameters)
    assert names[: len(positional)] == list(positional), f"{name}{signature}"
    try:
        signature.bind(*positional, **dict.fromkeys(keywords))
    except TypeError as exc:
        pytest.fail(f"{name}{signature} no longer takes {positional} + {keywords}: {exc}")


def test_runtime_api_messages_have_the_fields_the_guard_reads() -> None:
    messages = site.AcquireTaskRequest.DESCRIPTOR.file.message_types_by_name
    response = messages["AcquireTaskResponse"]
    assert {"task", "token"} <= set(response.fields_by_name)
    assert "fab_hash" in response.fields_by_name["task"].message_type.fields_by_name
    assert callable(site.RuntimeHttpClient.AcquireTask)
    assert isinstance(site.TaskType.CLIENT_APP.value, str)
    assert isinstance(site.ErrorCode.UNKNOWN, int)
    assert isinstance(site.SubStatus.FAILED, str)


def test_secure_aggregation_keys_exist() -> None:
    assert isinstance(site.RECORD_KEY_CONFIGS, str)
    assert isinstance(site.SecAggPlusKey.STAGE, str)
    assert isinstance(site.SecAggPlusKey.MASKED_PARAMETERS, str)
    assert isinstance(coordinator.MAIN_CONFIGS_RECORD, str)
    assert isinstance(coordinator.MAIN_PARAMS_RECORD, str)
    assert isinstance(coordinator.WorkflowKey.CURRENT_ROUND, str)
    assert issubclass(coordinator.GridClientProxy, coordinator.ClientProxy)
    proxy = coordinator.GridClientProxy(7, None, 0)  # type: ignore[arg-type]
    assert int(proxy.node_id) == 7  # secure_sum names contributors by it


def test_task_identity_is_settable(monkeypatch: pytest.MonkeyPatch) -> None:
    identity = coordinator.TaskIdentity
    for stored in ("_task_id", "_run_id", "_node_id"):  # restored after the test
        monkeypatch.setattr(identity, stored, vars(identity)[stored])
    identity.task_id, identity.run_id, identity.node_id = 3, 4, 5
    assert (identity.task_id, identity.run_id, identity.node_id) == (3, 4, 5)


def test_superlink_api_prefixes() -> None:
    assert coordinator.superlink_api_prefixes() == {
        "fleet": "/v1/fleet",
        "control": "/v1/control",
        "runtime": "/v1/runtime",
    }


def _flower_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flwr":
            found.append((node.lineno, node.module or "", [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("flwr")]
    return found


def test_nothing_else_imports_a_non_public_flower_name() -> None:
    offenders = []
    for folder in ("agent", "coordinator", "judge", "trainer", "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in ADAPTERS:
                continue
            for line, module, names in _flower_imports(path):
                public = set(getattr(importlib.import_module(module), "__all__", ()))
                if module not in PUBLIC_MODULES or not set(names) <= public:
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {module} {names}")
    assert not offenders, "use agent/ or coordinator/flower_internals.py:\n" + "\n".join(offenders)
