"""The builtin judge: a pointwise scorer on a frozen encoder, consistent by construction.

Each "task + response" text is encoded once by the first layers of the embedded SmolLM2-135M
in llama.cpp's embedding mode (mean pooling) and described by a few surface features (length,
repetition, copying of the task, ...). A linear score s(response) on those is the judge's
opinion of one response; a pair (A, B) gets the margin z = s(A) - s(B), and
p(Tie) = sigmoid(t . tie_inputs(z, log words(A) - log words(B), similarity(A, B))), where the
similarity (shared words, shared characters) is symmetric in A and B; the rest of the mass is
split sigmoid(z) : sigmoid(-z) between `1` and `2`. Swapping A and B therefore swaps p(1) and p(2)
exactly, so both presentation orders always agree, and a response is encoded once however many
comparisons it enters (the encodings are cached per text). Trained on human labels by
`pandalm-train builtin-judge`; see the model card next to the weights.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from judge.prompt import VERDICTS

if TYPE_CHECKING:
    from judge.backends import JudgeSpec
    from judge.cache import JudgmentCache
    from judge.engine import Pair

BUILTIN_HEAD = Path(__file__).parent / "builtin_judge" / "head.json"
TASK_CHARS = 600
RESPONSE_CHARS = 1400
_WORD = re.compile(r"\w+", re.UNICODE)
CLASSES = VERDICTS
"""The order of a probability row: judge.prompt's verdicts."""

GENERATE_UNSUPPORTED = (
    "the builtin judge is a pointwise scorer: it gives verdict probabilities (--mode score) but "
    "cannot write PandaLM's reason and reference; for generate mode use a PandaLM judge "
    "(gguf:PATH or hf:PATH)"
)


def encoder_text(instruction: str, input: str, response: str) -> str:
    """The text the encoder reads for one response: the task (cut) and the response (cut)."""
    task = instruction.strip() + ("\n" + input.strip() if input.strip() else "")
    return f"Task: {task[:TASK_CHARS]}\nResponse: {response.strip()[:RESPONSE_CHARS]}"


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


SURFACE_FEATURES: tuple[str, ...] = (
    "log_words",
    "log_lines",
    "empty",
    "distinct_words",
    "repeated_trigrams",
    "task_overlap",
    "copies_input",
    "ends_cleanly",
    "non_ascii",
)


def surface_features(instruction: str, input: str, response: str) -> np.ndarray:
    """Cheap per-response descriptors the encoder's mean pooling hides (see SURFACE_FEATURES)."""
    text = response.strip()
    words = _words(text)
    n = len(words)
    trigrams = [tuple(words[i : i + 3]) for i in range(max(n - 2, 0))]
    task_words = set(_words(instruction + " " + input))
    source = input.strip()
    return np.array(
        [
            math.log1p(n),
            math.log1p(text.count("\n")),
            float(n == 0),
            len(set(words)) / n if n else 0.0,
            1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0,
            sum(w in task_words for w in words) / n if n else 0.0,
            float(len(source) > 20 and source in text),
            float(text[-1:] in ".!?)\"'`]}" if text else False),
            sum(ord(c) > 127 for c in text) / len(text) if text else 0.0,
        ]
    )


@dataclass(frozen=True)
class PreferenceHead:
    """The score s(response) = weights . (features / scale), and the tie model on
    `tie_inputs`; stored as plain numbers in JSON."""

    scale: np.ndarray
    weights: np.ndarray
    tie_coef: np.ndarray
    tie_intercept: float
    meta: dict

    @classmethod
    def load(cls, path: Path) -> PreferenceHead:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            np.asarray(data["scale"]),
            np.asarray(data["weights"]),
            np.asarray(data["tie_coef"]),
            float(data["tie_intercept"]),
            data.get("meta", {}),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "meta": self.meta,
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "tie_coef": self.tie_coef.tolist(),
            "tie_intercept": self.tie_intercept,
        }
        path.write_text(json.dumps(data) + "\n", encoding="utf-8")

    def scores(self, features: np.ndarray) -> np.ndarray:
        """s(response) for a (n, features) matrix of responses."""
        return (features / self.scale) @ self.weights

    def probabilities(
        self, margin: np.ndarray, length_gap: np.ndarray, similarity: np.ndarray
    ) -> np.ndarray:
        """Rows of p(1), p(2), p(Tie) from z = s(A) - s(B), log words(A) - log words(B) and
        the pair's `pair_similarity` rows."""
        tie_logit = self.tie_intercept + tie_inputs(margin, length_gap, similarity) @ self.tie_coef
        p_tie = 1 / (1 + np.exp(-tie_logit))
        # sigmoid(z) and sigmoid(-z) written alike, so swapping A and B swaps them bit for bit
        return np.column_stack(
            [(1 - p_tie) / (1 + np.exp(-margin)), (1 - p_tie) / (1 + np.exp(margin)), p_tie]
        )


def tie_inputs(margin: np.ndarray, length_gap: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """The tie model's symmetric inputs: logs of |z| and of the length gap, their product, and
    the two responses' similarity. Humans call a tie when the margin is small *and* the lengths
    are close (a logistic model of the product can say "and"), and most of all when the two
    responses say nearly the same thing: on PandaLM's dev split 22 of the 34 pairs sharing 80%
    of their words are ties, against 48 of 536 overall."""
    log_margin = np.log(np.abs(margin) + 0.05)
    log_gap = np.log(np.abs(length_gap) + 0.05)
    return np.column_stack([log_margin, log_gap, log_margin * log_gap, similarity])


TIE_INPUTS = 5
"""Columns of `tie_inputs`: log |z|, log gap, their product, and the two similarities."""


def pair_similarity(response1: str, response2: str) -> tuple[float, float]:
    """How much two responses say the same: the share of distinct words they have in common
    (Jaccard) and difflib's matching-character ratio. Computed on the pair sorted, so both
    presentation orders get the same numbers bit for bit (and the second order, judged right
    after the first, finds them cached: difflib is the costly part)."""
    a, b = sorted((response1.strip()[:RESPONSE_CHARS], response2.strip()[:RESPONSE_CHARS]))
    return _sorted_pair_similarity(a, b)


@functools.lru_cache(maxsize=4096)
def _sorted_pair_similarity(a: str, b: str) -> tuple[float, float]:
    words_a, words_b = set(_words(a)), set(_words(b))
    union = words_a | words_b
    jaccard = len(words_a & words_b) / len(union) if union else 1.0
    return jaccard, difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def pair_similarities(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """`pair_similarity` rows for (response1, response2) pairs."""
    return np.array([pair_similarity(a, b) for a, b in pairs], dtype=float).reshape(-1, 2)


class LlamaEmbeddingEncoder:
    """Mean-pooled hidden states of a GGUF model through llama.cpp's embedding mode."""

    def __init__(self, path: Path, n_threads: int | None = None) -> None:
        import llama_cpp

        from judge.backends.tokens import file_identity

        self.llm = llama_cpp.Llama(
            model_path=str(path),
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            n_ctx=512,
            n_batch=512,
            n_ubatch=512,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            verbose=False,
        )
        self.identity = f"embed-mean:{file_identity([Path(path)])}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(
            [self.llm.embed(text, normalize=False, truncate=True) for text in texts],
            dtype=np.float32,
        )


class ResponseEncodings:
    """Per-response encodings, computed once per text and kept in the judgment cache."""

    def __init__(self, encoder, cache: JudgmentCache | None = None) -> None:
        self.encoder = encoder
        self.cache = cache
        self.memory: dict[str, np.ndarray] = {}
        self.encoded = 0
        """How many texts this object has run through the encoder (the rest came cached)."""

    def _key(self, text: str) -> str:
        from judge.cache import judgment_key

        return judgment_key(self.encoder.identity, "embedding", "", text)

    def get(
        self, texts: Sequence[str], on_encoded: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Encodings of `texts` in order; new ones are encoded in chunks and cached at once."""
        wanted = list(dict.fromkeys(t for t in texts if t not in self.memory))
        if wanted and self.cache is not None:
            keys = {t: self._key(t) for t in wanted}
            stored = self.cache.get_many(list(keys.values()))
            for text, key in keys.items():
                if key in stored:
                    self.memory[text] = np.asarray(stored[key]["embedding"], dtype=np.float32)
        missing = [t for t in wanted if t not in self.memory]
        for start in range(0, len(missing), 16):
            chunk = missing[start : start + 16]
            vectors = self.encoder.encode(chunk)
            self.encoded += len(chunk)
            if self.cache is not None:
                self.cache.put_many(
                    {
                        self._key(t): {"embedding": v.tolist()}
                        for t, v in zip(chunk, vectors, strict=True)
                    }
                )
            self.memory.update(zip(chunk, vectors, strict=True))
            if on_encoded:
                on_encoded(len(chunk))
        return np.stack([self.memory[t] for t in texts]) if texts else np.zeros((0, 0))


class ResponseFeaturizer:
    """Per-response features: the cached encoding followed by the surface features."""

    def __init__(self, encoder, cache: JudgmentCache | None = None) -> None:
        self.encodings = ResponseEncodings(encoder, cache)

    def features(self, tasks: Sequence[tuple[str, str]], responses: Sequence[str]) -> np.ndarray:
        texts = [encoder_text(i, x, r) for (i, x), r in zip(tasks, responses, strict=True)]
        encoded = self.encodings.get(texts)
        surface = [surface_features(i, x, r) for (i, x), r in zip(tasks, responses, strict=True)]
        return np.hstack([encoded, np.stack(surface)])


LOG_WORDS = -len(SURFACE_FEATURES)
"""Column of log(1 + words) in a response's feature row."""


class PointwiseJudgeBackend:
    """The builtin judge behind the `builtin` spec: pair probabilities from response scores."""

    pointwise = True

    def __init__(self, featurizer: ResponseFeaturizer, head: PreferenceHead, head_id: str):
        self.featurizer = featurizer
        self.head = head
        self.identity = f"pointwise:{featurizer.encodings.encoder.identity}:{head_id}"

    def attach_cache(self, cache: JudgmentCache | None) -> None:
        self.featurizer.encodings.cache = cache

    def probabilities(self, pairs: Sequence[Pair]) -> list[dict[str, float]]:
        """p(`1`), p(`2`), p(`Tie`) for each pair as presented (response1 first)."""
        if not pairs:
            return []
        tasks = [(p.instruction, p.input) for p in pairs]
        first = self.featurizer.features(tasks, [p.response1 for p in pairs])
        second = self.featurizer.features(tasks, [p.response2 for p in pairs])
        margin = self.head.scores(first) - self.head.scores(second)
        gap = first[:, LOG_WORDS] - second[:, LOG_WORDS]
        similarity = pair_similarities([(p.response1, p.response2) for p in pairs])
        rows = self.head.probabilities(margin, gap, similarity)
        return [dict(zip(CLASSES, map(float, row), strict=True)) for row in rows]


def builtin_encoder(n_threads: int | None = None) -> LlamaEmbeddingEncoder:
    """The embedded base's first layers in embedding mode (judge.models.builtin_encoder_gguf)."""
    from judge.models import builtin_encoder_gguf

    return LlamaEmbeddingEncoder(builtin_encoder_gguf(), n_threads)


def load_builtin(head_path: Path = BUILTIN_HEAD, n_threads: int | None = None):
    """The shipped builtin judge on the embedded base GGUF."""
    import hashlib

    from judge.models import ModelNotFoundError

    if not head_path.is_file():
        raise ModelNotFoundError(f"the builtin judge's head is missing: {head_path}")
    head = PreferenceHead.load(head_path)
    digest = hashlib.sha256(head_path.read_bytes()).hexdigest()[:12]
    return PointwiseJudgeBackend(ResponseFeaturizer(builtin_encoder(n_threads)), head, digest)


def from_spec(spec: JudgeSpec) -> PointwiseJudgeBackend:
    """The `builtin[?threads=N]` judge (judge.backends' registry loads it through this)."""
    return load_builtin(Path(spec.path), n_threads=int(spec.options.get("threads", 0)) or None)
