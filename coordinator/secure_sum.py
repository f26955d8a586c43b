"""Secure aggregation of the sites' tallies with Flower's SecAgg+ (legacy workflow API).

Flower 1.42 offers SecAgg+ only as `SecAggPlusWorkflow`, which drives a legacy `Strategy` over
four `train` rounds (keys, key shares, masked vectors, unmasking) and hands the strategy the
weighted *mean* of the sites' float vectors. Here each site's vector is its tallies for one
compare request, every site weighs 1, and the quantization step is exactly 1
(`quantization_range = 2 * clipping_range`), so the integers pass unchanged and the sum is the
mean times the number of contributing sites. The coordinator never sees one site's tallies,
only their sum; a site that drops out after sharing its keys is unmasked out of the sum.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, FitRes, Parameters, parameters_to_ndarrays
from flwr.server import ClientManager, LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow

from common.protocol import SECAGG_CLIP, SECAGG_MAX_SITES, SECAGG_MIN_SITES, SECAGG_MODULUS
from coordinator.flower_internals import (
    MAIN_CONFIGS_RECORD,
    MAIN_PARAMS_RECORD,
    ClientProxy,
    GridClientProxy,
    WorkflowKey,
)

log = logging.getLogger(__name__)

RECONSTRUCTION_FRACTION = 2 / 3
"""Share of a site's key shares needed to unmask: with 3 sites, any 2; one may drop out."""


def aggregation(setting: str, active_sites: int) -> tuple[str, bool]:
    """How a round's tallies travel under the `secure_aggregation` setting with this many active
    sites: (what to record on the run and show the operator, whether SecAgg+ sums them).
    `required` with too few or too many sites raises before any tally is sent in the clear."""
    if setting == "off":
        return "tallies in the clear (secure_aggregation = off)", False
    if SECAGG_MIN_SITES <= active_sites <= SECAGG_MAX_SITES:
        return f"SecAgg+ over {active_sites} sites", True
    if setting == "required":
        raise RuntimeError(
            f"secure_aggregation = required, but {active_sites} sites are active and SecAgg+ "
            f"needs {SECAGG_MIN_SITES} to {SECAGG_MAX_SITES}: stopped before any tally was "
            "sent in the clear"
        )
    return (
        f"tallies in the clear: {active_sites} sites, SecAgg+ needs {SECAGG_MIN_SITES} "
        "(secure_aggregation = when-possible)",
        False,
    )


class MessageExchange(Protocol):
    """What the workflow needs of a grid: send messages, return the replies that came."""

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None): ...


@dataclass(frozen=True)
class SecureSum:
    contributors: list[int]
    """Node ids whose masked vectors are in the sum."""
    values: list[int]


class _TallyStrategy(Strategy):
    """The legacy strategy SecAggPlusWorkflow drives: asks each site for the tallies of one
    compare request (the fit config) and keeps the unmasked aggregate."""

    def __init__(self, request: Mapping[str, Any], proxies: list[ClientProxy]) -> None:
        self.request = dict(request)
        self.proxies = proxies
        self.mean: np.ndarray | None = None
        self.contributors: list[int] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager):
        return [(proxy, FitIns(parameters, dict(self.request))) for proxy in self.proxies]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures):
        if results:
            self.contributors = sorted(int(proxy.node_id) for proxy, _ in results)
            self.mean = parameters_to_ndarrays(results[0][1].parameters)[0]
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round: int, results, failures):
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters):
        return None


def secure_sum(
    grid: MessageExchange,
    request: Mapping[str, Any],
    node_ids: list[int],
    round_number: int,
    timeout: float,
) -> SecureSum | None:
    """The exact sum of the tallies these sites hold for `request`, through SecAgg+; None when
    the protocol halted (too few sites answered a stage)."""
    proxies: list[ClientProxy] = [GridClientProxy(n, grid, 0) for n in node_ids]  # type: ignore[arg-type]
    strategy = _TallyStrategy(request, proxies)
    state = RecordDict(
        {
            MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: round_number}),
            MAIN_PARAMS_RECORD: ArrayRecord(),
        }
    )
    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}),
        strategy=strategy,
    )
    workflow = SecAggPlusWorkflow(
        num_shares=1.0,
        reconstruction_threshold=RECONSTRUCTION_FRACTION,
        max_weight=1.0,
        clipping_range=float(SECAGG_CLIP),
        quantization_range=2 * SECAGG_CLIP,
        modulus_range=SECAGG_MODULUS,
        timeout=timeout,
    )
    workflow(grid, context)  # type: ignore[arg-type]
    if strategy.mean is None:
        return None
    total = np.rint(strategy.mean * len(strategy.contributors)).astype(np.int64)
    return SecureSum(strategy.contributors, [int(v) for v in total])
