"""Judging pairs in both orders, with the judgment cache and swap-and-reconcile."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from common.protocol import JUDGE_MODES
from judge.backends.base import GenerationSettings, JudgeBackend, PointwiseBackend
from judge.cache import JudgmentCache, judgment_key
from judge.prompt import VERDICTS, Pair
from judge.verdict import (
    Verdict,
    argmax_verdict,
    combine_verdicts,
    is_consistent,
    normalize_logprobs,
    parse_output,
    swap_probabilities,
    swap_verdict,
)

Mode = Literal[JUDGE_MODES]


@dataclass(frozen=True)
class OrderJudgment:
    """The judge's output for one presentation order, expressed in the pair's own terms."""

    verdict: Verdict
    reason: str = ""
    reference: str = ""
    probabilities: dict[str, float] | None = None


@dataclass(frozen=True)
class PairJudgment:
    """Both orders of a pair and their reconciled verdict (see judge.verdict's rule table)."""

    verdict: Verdict
    forward: OrderJudgment
    backward: OrderJudgment | None
    probabilities: dict[str, float] | None = None

    def orders(self) -> tuple[Verdict, ...]:
        """Each order's verdict, in the pair's terms."""
        return tuple(o.verdict for o in (self.forward, self.backward) if o is not None)

    @property
    def consistent(self) -> bool | None:
        if self.backward is None:
            return None
        return is_consistent(self.forward.verdict, self.backward.verdict)

    def as_record(self) -> dict:
        """The fields `pandalm-judge compare` adds to each input line."""
        orders = [{"order": "12", **_order_record(self.forward)}]
        if self.backward is not None:
            orders.append({"order": "21", **_order_record(self.backward)})
        record: dict = {"verdict": self.verdict, "consistent": self.consistent, "orders": orders}
        if self.forward.probabilities is None:
            record["reason"] = self.forward.reason
            record["reference"] = self.forward.reference
        else:
            record["probabilities"] = self.probabilities
        return record


def _order_record(order: OrderJudgment) -> dict:
    return {k: v for k, v in asdict(order).items() if v is not None}


@dataclass
class RunStats:
    """Counts over a judging run; consistency is over pairs judged in both orders. With the
    pairs given, it also keeps what the bias diagnostics need (judge.metrics.bias_diagnostics)."""

    pairs: int = 0
    two_order_pairs: int = 0
    consistent_pairs: int = 0
    verdicts: dict[str, int] | None = None
    texts: list[tuple[str, str]] = field(default_factory=list)
    predicted: list[Verdict] = field(default_factory=list)
    orders: list[tuple[Verdict, ...]] = field(default_factory=list)

    def add(self, judgment: PairJudgment, pair: Pair | None = None) -> None:
        self.verdicts = self.verdicts or {v: 0 for v in (*VERDICTS, "invalid")}
        self.pairs += 1
        self.verdicts[judgment.verdict] += 1
        if judgment.consistent is not None:
            self.two_order_pairs += 1
            self.consistent_pairs += int(judgment.consistent)
        if pair is not None:
            self.texts.append((pair.response1, pair.response2))
            self.predicted.append(judgment.verdict)
            self.orders.append(judgment.orders())

    def diagnostics(self, gold: Sequence[Verdict] | None = None) -> dict:
        from judge.metrics import bias_diagnostics

        return bias_diagnostics(self.texts, gold, self.predicted, self.orders)

    @property
    def consistency(self) -> float | None:
        return self.consistent_pairs / self.two_order_pairs if self.two_order_pairs else None


class PairJudge:
    """Judges pairs with one backend; each order's raw output is cached by prompt."""

    def __init__(
        self,
        backend: JudgeBackend | PointwiseBackend,
        mode: Mode = "generate",
        settings: GenerationSettings | None = None,
        cache: JudgmentCache | None = None,
        both_orders: bool = True,
        chunk_pairs: int = 8,
    ) -> None:
        if mode not in JUDGE_MODES:
            raise ValueError(f"mode must be one of {JUDGE_MODES}, got {mode!r}")
        self.pointwise = getattr(backend, "pointwise", False)
        if self.pointwise:
            if mode == "generate":
                from judge.pointwise import GENERATE_UNSUPPORTED

                raise ValueError(GENERATE_UNSUPPORTED)
            backend.attach_cache(cache)  # per-response encodings instead of per-prompt outputs
        self.backend = backend
        self.mode = mode
        self.settings = settings or GenerationSettings()
        self.cache = cache
        self.both_orders = both_orders
        self.chunk_pairs = chunk_pairs
        self._settings_key = json.dumps(asdict(self.settings)) if mode == "generate" else ""

    def judge(self, pairs: Sequence[Pair]) -> list[PairJudgment]:
        return list(self.judge_iter(pairs))

    def judge_iter(self, pairs: Iterable[Pair]) -> Iterator[PairJudgment]:
        """Yield one judgment per pair, in input order, computing a chunk of pairs at a time."""
        chunk: list[Pair] = []
        for pair in pairs:
            chunk.append(pair)
            if len(chunk) == self.chunk_pairs:
                yield from self._judge_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._judge_chunk(chunk)

    def _judge_chunk(self, pairs: list[Pair]) -> list[PairJudgment]:
        if self.pointwise:
            return self._judge_pointwise(pairs)
        # The two orders of a pair stay adjacent: llama.cpp reuses their shared prefix.
        prompts = [p.prompt(swapped) for p in pairs for swapped in self._orders()]
        raw = self._raw_outputs(prompts)
        per_pair = len(self._orders())
        return [
            self._reconcile([raw[prompts[i * per_pair + k]] for k in range(per_pair)])
            for i in range(len(pairs))
        ]

    def _judge_pointwise(self, pairs: list[Pair]) -> list[PairJudgment]:
        """Both orders from the backend's per-response encodings (each encoded once)."""
        forward = self.backend.probabilities(pairs)
        backward: list[dict[str, float] | None] = [None] * len(pairs)
        if self.both_orders:
            swapped = [Pair(p.instruction, p.input, p.response2, p.response1) for p in pairs]
            backward = [swap_probabilities(q) for q in self.backend.probabilities(swapped)]
        return [
            _pair_judgment(
                OrderJudgment(argmax_verdict(ahead), probabilities=ahead),
                None
                if behind is None
                else OrderJudgment(argmax_verdict(behind), probabilities=behind),
            )
            for ahead, behind in zip(forward, backward, strict=True)
        ]

    def _orders(self) -> tuple[bool, ...]:
        return (False, True) if self.both_orders else (False,)

    def _raw_outputs(self, prompts: list[str]) -> dict[str, dict]:
        keys = {
            p: judgment_key(self.backend.identity, self.mode, self._settings_key, p)
            for p in prompts
        }
        cached = self.cache.get_many(list(keys.values())) if self.cache else {}
        outputs = {p: cached[k] for p, k in keys.items() if k in cached}
        missing = list(dict.fromkeys(p for p in prompts if p not in outputs))
        if missing:
            if self.mode == "generate":
                texts = self.backend.generate(missing, self.settings)
                fresh = {p: {"text": t} for p, t in zip(missing, texts, strict=True)}
            else:
                scores = self.backend.score(missing, list(VERDICTS))
                fresh = {p: {"logprobs": s} for p, s in zip(missing, scores, strict=True)}
            if self.cache:
                self.cache.put_many({keys[p]: v for p, v in fresh.items()})
            outputs.update(fresh)
        return outputs

    def _reconcile(self, raw_orders: list[dict]) -> PairJudgment:
        orders = [self._order_judgment(raw, swapped=k == 1) for k, raw in enumerate(raw_orders)]
        return _pair_judgment(orders[0], orders[1] if len(orders) > 1 else None)

    @staticmethod
    def _order_judgment(raw: dict, swapped: bool) -> OrderJudgment:
        if "text" in raw:
            parsed = parse_output(raw["text"])
            verdict = swap_verdict(parsed.verdict) if swapped else parsed.verdict
            return OrderJudgment(verdict, parsed.reason, parsed.reference)
        probs = normalize_logprobs(dict(zip(VERDICTS, raw["logprobs"], strict=True)))
        if swapped:
            probs = swap_probabilities(probs)
        return OrderJudgment(argmax_verdict(probs), probabilities=probs)


def _pair_judgment(forward: OrderJudgment, backward: OrderJudgment | None) -> PairJudgment:
    """Reconcile the two orders (judge.verdict's rule table); probabilities are averaged."""
    if backward is None:
        return PairJudgment(forward.verdict, forward, None, forward.probabilities)
    combined = None
    if forward.probabilities is not None and backward.probabilities is not None:
        combined = {v: (forward.probabilities[v] + backward.probabilities[v]) / 2 for v in VERDICTS}
    return PairJudgment(
        combine_verdicts(forward.verdict, backward.verdict), forward, backward, combined
    )
