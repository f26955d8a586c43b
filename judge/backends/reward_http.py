"""A reward model served on the site's network (`reward:URL?api=vllm|tei`).

One request shape per server kind:

- `vllm` (`vllm serve MODEL --task reward`, or `--runner pooling`): `POST /pooling` with
  `{"model", "messages": [user turn, assistant turn]}`, one response a request; the server
  applies the model's chat template. The answer's `data[0].data` is the pooled output: one
  number, or one per token for a per-token reward head, of which the last is the sequence's.
- `tei` (text-embeddings-inference serving a sequence-classification model): `POST /predict`
  with `{"inputs": [[user text, response], ...], "raw_scores": true}`, up to TEI_BATCH pairs a
  request, answered with one `[{"score", "label"}]` list per pair: the model's pair encoding,
  as judge/backends/reward_hf.py feeds a model without a chat template.

Requests run concurrently (`concurrency`); the server batches them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from judge.backends.openai import EndpointError
from judge.pointwise import Task, user_text

ENDPOINTS = {"vllm": "/pooling", "tei": "/predict"}
CHECKS = {"vllm": "/v1/models", "tei": "/info"}
"""What is asked at load, to check that the server is there and of the kind named."""
TEI_BATCH = 32
"""TEI's default --max-client-batch-size."""


def _last_number(pooled: Any) -> float:
    """The sequence's reward in vLLM's pooled output: a number, or the last of a nesting."""
    while isinstance(pooled, list) and pooled:
        pooled = pooled[-1]
    if isinstance(pooled, bool) or not isinstance(pooled, int | float):
        raise TypeError(f"not a number: {pooled!r}")
    return float(pooled)


class ServedRewardModel:
    """Scores responses through a vLLM or text-embeddings-inference server."""

    def __init__(
        self,
        url: str,
        api: str = "vllm",
        model: str | None = None,
        concurrency: int = 4,
        timeout: float = 600.0,
    ) -> None:
        if api not in ENDPOINTS:
            raise ValueError(f"api must be one of {tuple(ENDPOINTS)}, got {api!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        base = url.rstrip("/").removesuffix(ENDPOINTS[api]).removesuffix("/v1")
        self.api, self.url, self.concurrency = api, base + ENDPOINTS[api], concurrency
        self.client = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))
        self.model = self._check(base + CHECKS[api], model)
        self.identity = f"{api}:{self.url}:{self.model}"

    def _check(self, url: str, wanted: str | None) -> str:
        """The served model's name (vLLM: `wanted` or the first listed; TEI: its model_id)."""
        try:
            answer = self.client.get(url).raise_for_status()
            body = answer.json()
            served = [e["id"] for e in body["data"]] if self.api == "vllm" else [body["model_id"]]
        except httpx.HTTPError as exc:
            raise OSError(f"no reward server answers at {url} ({exc})") from exc
        except (ValueError, LookupError, TypeError) as exc:
            raise OSError(f"{url} does not answer as a {self.api} server does") from exc
        if wanted is not None and wanted not in served:
            raise OSError(f"{url} serves {served}, not {wanted!r}")
        return str(wanted or served[0])

    def _post(self, body: dict[str, Any]) -> Any:
        try:
            answer = self.client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise EndpointError(f"reward server {self.url} failed: {exc}") from exc
        if answer.status_code != 200:
            raise EndpointError(
                f"reward server {self.url} answered HTTP {answer.status_code}: {answer.text[:300]}"
            )
        return answer.json()

    def _concurrently(self, work: Callable[[Any], list[float]], items: list) -> list[float]:
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(items)))) as pool:
            return [score for part in pool.map(work, items) for score in part]

    def _vllm(self, item: tuple[str, str]) -> list[float]:
        user, response = item
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
        answer = self._post({"model": self.model, "messages": messages})
        try:
            return [_last_number(answer["data"][0]["data"])]
        except (LookupError, TypeError) as exc:
            raise EndpointError(f"{self.url}: no pooled reward in {str(answer)[:200]}") from exc

    def _tei(self, batch: list[tuple[str, str]]) -> list[float]:
        answer = self._post({"inputs": [list(pair) for pair in batch], "raw_scores": True})
        try:
            scores = [float(labels[0]["score"]) for labels in answer]
        except (LookupError, TypeError, ValueError) as exc:
            raise EndpointError(f"{self.url}: no scores in {str(answer)[:200]}") from exc
        if len(scores) != len(batch):
            raise EndpointError(f"{self.url}: {len(scores)} scores for {len(batch)} inputs")
        return scores

    def rewards(self, tasks: Sequence[Task], responses: Sequence[str]) -> list[float]:
        items = [(user_text(t), r) for t, r in zip(tasks, responses, strict=True)]
        if self.api == "vllm":
            return self._concurrently(self._vllm, items)
        batches = [items[i : i + TEI_BATCH] for i in range(0, len(items), TEI_BATCH)]
        return self._concurrently(self._tei, batches)
