"""What a response looks like, without reading its meaning: the measures behind the rule judges
(`rule:length`, `rule:length-repetition`) and the builtin judge's features.

Every measure here means the same thing on any dataset (length with diminishing returns,
repetition and degeneration, truncation, near-empty answers, copying the task, garbage, a
script that does not match the task's), which is what lets a judge fitted on some preference
sources carry to others. Each response is measured on its own text plus its task, never on the
other response, so a score built from these is the same in both presentation orders.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import unicodedata

_WORD = re.compile(r"\w+", re.UNICODE)
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_TERMINAL = tuple(".!?)\"'`]}>*:;|\u3002\uff01\uff1f")
_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i can(?:'|no)?t|i cannot|i'?m not able|"
    r"i am not able|i'?m unable|i am unable|as an ai|as a language model)\b",
    re.IGNORECASE,
)

RESPONSE_CHARS = 4000
"""Characters of a response that the measures read (its start): a 4,000-character answer is
already long by every rule here, and cutting bounds the cost of pathological inputs."""
TASK_CHARS = 4000
"""Characters of the instruction + input that the task measures read (their start)."""


def tokens(text: str) -> list[str]:
    """Word and punctuation tokens (each run of word characters, each other non-space
    character): the unit of `rule:length-repetition` and of the builtin's length."""
    return _TOKEN.findall(text)


def words(text: str) -> list[str]:
    """Lower-cased word characters runs (any script)."""
    return _WORD.findall(text.lower())


def repeated_trigram_share(toks: list[str]) -> float:
    """Share of a token sequence's 3-grams that repeat an earlier one (0: none repeats)."""
    grams = [tuple(toks[i : i + 3]) for i in range(len(toks) - 2)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def length_score(response: str) -> float:
    """`rule:length`'s score: the response's word count (whitespace-separated), as in
    judge.metrics.length_verdict."""
    return float(len(response.split()))


def length_repetition_score(response: str) -> float:
    """`rule:length-repetition`'s score: token count x (1 - share of repeated 3-grams)^2, so a
    long answer that loops scores like a short one."""
    toks = tokens(response)
    return len(toks) * (1 - repeated_trigram_share(toks)) ** 2


def _non_ascii_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(ord(c) > 127 for c in letters) / len(letters) if letters else 0.0


def _garbage_share(text: str) -> float:
    """Share of characters that are neither letters, digits, spaces nor punctuation marks
    (control characters, private-use and unassigned code points, replacement characters)."""
    if not text:
        return 0.0
    odd = sum(
        unicodedata.category(c)[0] in "CS" and c not in "\n\t\r" and c not in "$+<=>^`|~"
        for c in text
    )
    return odd / len(text)


def _ngrams(items: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(items[i : i + n]) for i in range(len(items) - n + 1)}


RESPONSE_FEATURES: tuple[str, ...] = (
    "log_tokens",
    "log_effective_tokens",
    "repeated_trigrams",
    "distinct_words",
    "near_empty",
    "cut_mid_sentence",
    "copies_task",
    "task_recall",
    "garbage",
    "script_mismatch",
    "refusal",
    "log_lines",
)
"""Columns of `response_features`."""


def response_features(instruction: str, input: str, response: str) -> list[float]:
    """One response's measures, in the order of RESPONSE_FEATURES:
    log(1 + tokens) and log(1 + tokens x (1 - repeated 3-gram share)^2) (length with
    diminishing returns, plain and discounted for loops); the repeated 3-gram share and the
    distinct-word share; fewer than 3 words; a long answer that stops without closing
    punctuation; the share of its word 4-grams copied from the task; the share of the task's
    words it uses; garbage characters; a script that does not match the task's (an English
    task answered in Cyrillic, or the other way round); an apology or refusal opening; and
    log(1 + line breaks)."""
    text = response.strip()[:RESPONSE_CHARS]
    task = (instruction.strip() + "\n" + input.strip()).strip()[:TASK_CHARS]
    toks = tokens(text)
    response_words, task_words = words(text), words(task)
    repeated = repeated_trigram_share(toks)
    grams = _ngrams(response_words, 4)
    task_vocabulary = set(task_words)
    return [
        math.log1p(len(toks)),
        math.log1p(len(toks) * (1 - repeated) ** 2),
        repeated,
        len(set(response_words)) / len(response_words) if response_words else 0.0,
        float(len(response_words) < 3),
        float(len(toks) >= 30 and not text.endswith(_TERMINAL)),
        len(grams & _ngrams(task_words, 4)) / len(grams) if grams else 0.0,
        len(task_vocabulary & set(response_words)) / len(task_vocabulary)
        if task_vocabulary
        else 0.0,
        _garbage_share(text),
        abs(_non_ascii_share(text) - _non_ascii_share(task)),
        float(bool(_REFUSAL.search(text[:200]))),
        math.log1p(text.count("\n")),
    ]


SIMILARITY_CHARS = 1500
"""Characters of each response that `pair_similarity` compares (difflib is quadratic)."""


def pair_similarity(response1: str, response2: str) -> float:
    """How much two responses say the same: difflib's matching-character ratio of their starts.
    Computed on the pair sorted, so both presentation orders get the same number bit for bit
    (and the second order finds it cached)."""
    a, b = sorted((response1.strip()[:SIMILARITY_CHARS], response2.strip()[:SIMILARITY_CHARS]))
    return _sorted_pair_similarity(a, b)


@functools.lru_cache(maxsize=4096)
def _sorted_pair_similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
