"""A judge served by an OpenAI-compatible completions endpoint (llama.cpp's server, vLLM, TGI).

Generate mode streams a greedy completion and stops once its parse is settled, as the in-process
backends do. Score mode needs each continuation's total log-probability, all its tokens:

- `echo`: the server scores `prompt + continuation` itself (`echo` with `logprobs`), one request
  per continuation; exact wherever the server's echoed log-probabilities are right.
- `top`: the log-probabilities of the first generated token, a request per prompt (chained for
  a continuation of several tokens): the whole vocabulary's where the server lists it (exact),
  else the top `logprobs` (exact while each token is listed, else bounded by the least listed).

`auto` checks once whether the server's echoed log-probability of a token equals the one it
gives that token when generating it, and uses `echo` if so, `top` if not. (llama-cpp-python's
server shifts echoed log-probabilities by one token for a model without a BOS token, such as
SmolLM2.) Prompts go to the server as concurrent requests; it batches them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from judge.backends.base import GenerationSettings
from judge.verdict import generation_settled

if TYPE_CHECKING:
    from judge.backends import JudgeSpec

log = logging.getLogger(__name__)

SCORINGS = ("auto", "echo", "top")
ALL_TOKENS = 1 << 18
"""A `logprobs` count above any vocabulary's size: asks for every token's log-probability."""
_ECHO_AGREEMENT = 0.01
"""Largest difference between a token's echoed and generated log-probability that `auto`
accepts (servers may batch the two requests differently)."""


STREAM_CUT = (
    "the judge server cut a completion short (llama-cpp-python's server "
    "cuts a stream short when another request arrives: start it with --interrupt_requests "
    "false, or judge with concurrency=1)"
)


class EndpointError(RuntimeError):
    """The judge server answered, but not with what a judge needs."""


def completions_url(url: str) -> str:
    """The completions endpoint of a server URL: `http://host:8000`, `.../v1` or the full path."""
    path = url.rstrip("/")
    if path.endswith("/completions"):
        return path
    return path + ("/completions" if path.endswith("/v1") else "/v1/completions")


def server_root(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class OpenAICompletionsBackend:
    """Judges through `POST /v1/completions`; nothing is loaded in this process."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        concurrency: int = 4,
        scoring: str = "auto",
        logprobs: int = 20,
        timeout: float = 600.0,
    ) -> None:
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        if concurrency < 1 or logprobs < 1:
            raise ValueError("concurrency and logprobs must be at least 1")
        self.url = completions_url(url)
        self.concurrency = concurrency
        self.logprobs = logprobs
        self.client = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))
        self.model = self._served_model(model)
        self.identity = f"openai:{self.url}:{self.model}"
        self._scoring = None if scoring == "auto" else scoring
        self._scoring_lock = threading.Lock()
        self._list_all = True

    def _served_model(self, wanted: str | None) -> str:
        """`wanted`, or the first model the server lists; checks that the server is there and
        serves it."""
        models_url = self.url.removesuffix("/completions") + "/models"
        try:
            response = self.client.get(models_url)
        except httpx.HTTPError as exc:
            raise OSError(f"no judge server answers at {models_url} ({exc})") from exc
        if response.status_code != 200:
            raise OSError(f"{models_url} answered HTTP {response.status_code}, not a model list")
        try:
            served = [str(entry["id"]) for entry in response.json()["data"]]
        except (ValueError, LookupError, TypeError) as exc:
            raise OSError(f"{models_url} gives no model list") from exc
        if not served or (wanted is not None and wanted not in served):
            raise OSError(f"{models_url} serves {served or 'no model'}, not {wanted!r}")
        return wanted or served[0]

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.client.post(self.url, json={"model": self.model, **body})
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        if response.status_code != 200:
            raise self._status_error(response)
        return response.json()

    def _status_error(self, response: httpx.Response) -> EndpointError:
        return EndpointError(
            f"judge server {self.url} answered HTTP {response.status_code}: {response.text[:300]}"
        )

    def _transport_error(self, exc: httpx.HTTPError) -> Exception:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return OSError(f"judge server {self.url} unreachable ({exc})")
        if isinstance(exc, httpx.TimeoutException):
            return EndpointError(f"judge server {self.url} did not answer in time ({exc})")
        return EndpointError(f"{self.url}: {STREAM_CUT} ({exc})")

    def _concurrently(self, work: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        items = list(items)
        if len(items) <= 1 or self.concurrency == 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(min(self.concurrency, len(items))) as pool:
            return list(pool.map(work, items))

    # -- generate mode --------------------------------------------------------------------

    def generate(self, prompts: list[str], settings: GenerationSettings) -> list[str]:
        if settings.num_beams != 1:
            raise ValueError(
                "beam search is not available through a completions endpoint: use an hf: judge"
            )
        return self._concurrently(lambda prompt: self._generate_one(prompt, settings), prompts)

    def _generate_one(self, prompt: str, settings: GenerationSettings) -> str:
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": settings.max_new_tokens,
            "temperature": 0.0,
            # llama.cpp's server defaults to a penalty of 1.1; vLLM and TGI spell it this way
            "repeat_penalty": settings.repetition_penalty,
            "repetition_penalty": settings.repetition_penalty,
            "stream": True,
        }
        text, finished = "", False
        try:
            with self.client.stream("POST", self.url, json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._status_error(response)
                for line in response.iter_lines():
                    data = line.removeprefix("data:").strip()
                    if not line.startswith("data:") or not data or data == "[DONE]":
                        continue
                    choice = (json.loads(data).get("choices") or [{}])[0]
                    text += choice.get("text") or ""
                    finished = finished or bool(choice.get("finish_reason"))
                    if settings.stop_early and generation_settled(text):
                        return text  # closing the stream tells the server to stop
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        if not finished:
            raise EndpointError(f"{self.url}: {STREAM_CUT}")
        return text

    # -- score mode -----------------------------------------------------------------------

    def score(self, prompts: list[str], continuations: list[str]) -> list[list[float]]:
        if self._scoring is None:
            self._choose_scoring(prompts[0])
        if self._scoring == "echo":
            cells = [(p, c) for p in prompts for c in continuations]
            flat = self._concurrently(lambda cell: self._echo_logprob(*cell), cells)
            width = len(continuations)
            return [flat[i : i + width] for i in range(0, len(flat), width)]
        return self._concurrently(lambda p: self._top_logprobs_row(p, continuations), prompts)

    def _first_token(self, prompt: str, count: int = 1) -> tuple[str, float, dict[str, float]]:
        """The greedy next token after `prompt`, its log-probability and the `count` most
        likely next tokens' log-probabilities."""
        body = {"prompt": prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": count}
        choice = self._post(body)["choices"][0]
        logprobs = choice.get("logprobs") or {}
        try:
            token = logprobs["tokens"][0]
            top = {str(k): float(v) for k, v in (logprobs["top_logprobs"][0] or {}).items()}
            return token, float(logprobs["token_logprobs"][0]), top
        except (LookupError, TypeError, ValueError) as exc:
            raise EndpointError(
                f"judge server {self.url} gives no token log-probabilities, which score mode "
                "needs (use generate mode with this server)"
            ) from exc

    def _listing(self, prompt: str) -> dict[str, float]:
        """Next-token log-probabilities after `prompt`: the whole vocabulary where the server
        lists it (llama.cpp's does, at about the cost of a short list), else the top
        `logprobs` (vLLM refuses more than its --max-logprobs)."""
        if self._list_all:
            try:
                return self._first_token(prompt, ALL_TOKENS)[2]
            except EndpointError as exc:
                log.info("judge server %s lists no whole vocabulary (%s)", self.url, exc)
                self._list_all = False
        return self._first_token(prompt, self.logprobs)[2]

    def _echo_logprob(self, prompt: str, continuation: str) -> float:
        """log p(continuation | prompt), every token, as the server scores the joined text."""
        text = prompt + continuation
        body = {"prompt": text, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
        logprobs = self._post(body)["choices"][0].get("logprobs") or {}
        offsets, values = logprobs.get("text_offset") or [], logprobs.get("token_logprobs") or []
        inside = [
            k for k, offset in enumerate(offsets) if len(prompt) <= offset < len(text)
        ]  # the generated token starts at len(text) or later
        if not inside or offsets[inside[0]] != len(prompt):
            raise EndpointError(
                f"cannot split the continuation {continuation!r} off the prompt's tokens in "
                f"{self.url}'s echo"
            )
        if any(values[k] is None for k in inside):
            raise EndpointError(f"judge server {self.url} echoes no prompt log-probabilities")
        return sum(float(values[k]) for k in inside)

    def _top_logprobs_row(self, prompt: str, continuations: list[str]) -> list[float]:
        listings: dict[str, dict[str, float]] = {}

        def listing(text: str) -> dict[str, float]:
            if text not in listings:
                listings[text] = self._listing(text)
            return listings[text]

        return [self._top_logprob(prompt, c, listing) for c in continuations]

    def _top_logprob(
        self, prompt: str, continuation: str, listing: Callable[[str], dict[str, float]]
    ) -> float:
        """Read off the listed log-probabilities; a continuation of several tokens goes on
        with its longest listed first token appended to the prompt."""
        top = listing(prompt)
        if continuation in top:
            return top[continuation]
        heads = [token for token in top if token and continuation.startswith(token)]
        if not heads:
            log.warning(
                "%r is not among the judge's %d listed next tokens: its log-probability is taken "
                "as the lowest listed one",
                continuation,
                len(top),
            )
            return min(top.values())
        head = max(heads, key=len)
        return top[head] + self._top_logprob(prompt + head, continuation[len(head) :], listing)

    def _choose_scoring(self, prompt: str) -> None:
        """`echo` if the server's echoed log-probability of the greedy next token equals the
        one it reports when generating that token, else `top`."""
        with self._scoring_lock:
            if self._scoring is not None:
                return
            token, generated, _ = self._first_token(prompt)
            try:
                echoed = self._echo_logprob(prompt, token) if token else None
            except EndpointError as exc:
                log.info("judge server %s: echo scoring unusable (%s)", self.url, exc)
                echoed = None
            agrees = echoed is not None and abs(echoed - generated) <= _ECHO_AGREEMENT
            self._scoring = "echo" if agrees else "top"
            log.info("judge server %s: scoring with %s log-probabilities", self.url, self._scoring)

    @property
    def scoring(self) -> str | None:
        """The scoring method in use (None until `auto` has chosen)."""
        return self._scoring

    def count_tokens(self, text: str) -> int:
        """Through the server's tokenizer: vLLM's `/tokenize` or llama.cpp's
        `/extras/tokenize`."""
        root = server_root(self.url)
        for path, body in (
            ("/tokenize", {"model": self.model, "prompt": text}),
            ("/extras/tokenize", {"input": text}),
        ):
            try:
                response = self.client.post(root + path, json=body)
            except httpx.HTTPError as exc:
                raise OSError(f"judge server {root} unreachable ({exc})") from exc
            if response.status_code == 200:
                return len(response.json()["tokens"])
        raise EndpointError(f"judge server {root} offers no tokenize endpoint")


def from_spec(spec: JudgeSpec) -> OpenAICompletionsBackend:
    """`openai:URL[?model=NAME&...]` (judge.backends' registry loads it through this)."""
    return OpenAICompletionsBackend(
        str(spec.path),
        model=str(spec.options["model"]) if spec.options.get("model") else None,
        concurrency=int(spec.options.get("concurrency", 4)),
        scoring=str(spec.options.get("scoring", "auto")),
        logprobs=int(spec.options.get("logprobs", 20)),
        timeout=float(spec.options.get("timeout", 600)),
    )
