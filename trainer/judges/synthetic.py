"""Synthetic judge-training pairs built from human-written seed tasks (verdicts by construction).

They train a PandaLM-format judge (`pandalm-train judge --seed-tasks`, `pandalm-train
judge-data`). The builtin pointwise judge does not use them: tried as a sixth source, they gave
no held-out gain (docs/JUDGE_TRAINING.md).

Source: the 175 seed tasks of Stanford Alpaca / self-instruct (`seed_tasks.jsonl`: instruction,
instances[input, output], Apache-2.0), each with a human-written answer. PandaLM's human-labelled
test set is *not* a source: its instructions are self-instruct's user-oriented evaluation set,
whose authors ask that it not be used for training, so any seed task whose instruction also
appears in a test set given as `exclude` is left out.

Every pair's verdict is known by construction: the human answer against a variant with one of
the paper's defects, or two equivalent answers (or two equally useless ones) as a Tie. The
reason names the defect and the reference is the human answer:

| kind          | the other response                                | verdict | criterion         |
|---------------|---------------------------------------------------|---------|-------------------|
| truncated     | the answer cut off after 30-60% of its words      | win     | comprehensiveness |
| repetitive    | its first sentence (or words) repeated 4-7 times  | win     | repetition        |
| degenerate    | one token of it repeated 8-30 times, as a broken  | win     | repetition        |
|               | model writes ("N N N", "9999", "firefirefire")    |         |                   |
| off_topic     | the answer to another seed task                   | win     | irrelevance       |
| contradicted  | numbers changed, or the answer plus its negation  | win     | logical errors    |
| ungrammatical | content words shuffled, function words cut        | win     | grammar, clarity  |
| verbose       | the answer buried in filler sentences             | win     | conciseness       |
| incomplete    | only the first sentence of a longer answer        | win     | comprehensiveness |
| evasive       | a fluent non-answer ("It depends on ...")         | win     | following orders  |
| equivalent    | the same answer after a neutral lead-in           | Tie     | equally good      |

`incomplete` and `evasive` losers are fluent, like a weak model's answers: without them the
judge learns to spot broken text but not to prefer the more complete, helpful answer of two
fluent ones (a first run without them judged almost every pair of the dev split by position).
Two equally off-topic answers made a second Tie kind at first; it was dropped because it put
Ties at 28% of the data, three times their share in human labels.

Which position holds the better answer is drawn per pair (seeded); `swap_augment` later adds
each record's mirror. Variants that do not apply (a one-word answer cannot be truncated) are
skipped.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from common.records import InputError, read_records
from trainer.judges.data import JudgeRecord

__all__ = [
    "PAIR_KINDS",
    "SeedTask",
    "build_synthetic_records",
    "load_seed_tasks",
]

PAIR_KINDS: tuple[str, ...] = (
    "truncated",
    "repetitive",
    "off_topic",
    "contradicted",
    "ungrammatical",
    "verbose",
    "incomplete",
    "evasive",
    "equivalent",
)
_FUNCTION_WORDS = {"the", "a", "an", "of", "to", "is", "are", "and", "in", "for", "on", "with"}
_FILLER = (
    "This is a great question and there are many things to consider here.",
    "It is important to think carefully about every aspect of the task before answering.",
    "Many people have asked about this over the years, and opinions differ.",
    "Let me explain this in a lot of detail so that nothing is left out.",
)
_LEAD_INS = ("Sure. ", "Here is the answer: ", "Certainly! ", "Of course. ")
_EVASIONS = (
    "It depends on many factors, so there is no single answer to this.",
    "I am not sure about that. You may want to look it up.",
    "That is an interesting question. There are different views on it.",
    "I cannot help with this request.",
    "Please provide more details so that I can answer.",
    "This is something you should decide for yourself.",
)


@dataclass(frozen=True)
class SeedTask:
    """One human-written task and its answer."""

    instruction: str
    input: str
    output: str


def load_seed_tasks(path: Path) -> list[SeedTask]:
    """Seed tasks (`instruction`, `instances[0].input/.output`), or flat Alpaca records."""
    tasks = []
    for where, record in read_records(path):
        instance = (record.get("instances") or [record])[0]
        fields = (record.get("instruction"), instance.get("input", ""), instance.get("output"))
        if not all(isinstance(value, str) for value in fields):
            raise InputError(f"{where}: needs string instruction, input and output fields")
        instruction, input_text, output = (str(value) for value in fields)
        if instruction.strip() and output.strip():
            tasks.append(SeedTask(instruction.strip(), input_text.strip(), output.strip()))
    if not tasks:
        raise InputError(f"{path}: no seed tasks")
    return tasks


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def _truncated(answer: str, rng: random.Random) -> str | None:
    words = answer.split()
    if len(words) < 8:
        return None
    return " ".join(words[: max(2, int(len(words) * rng.uniform(0.3, 0.6)))])


def _repetitive(answer: str, rng: random.Random) -> str | None:
    sentences = _sentences(answer)
    unit = sentences[0] if len(sentences) > 1 else " ".join(answer.split()[:6])
    if len(unit.split()) < 2:
        return None
    return " ".join([unit] * rng.randint(4, 7))


def _degenerate(answer: str, rng: random.Random) -> str:
    tokens = re.findall(r"\w+", answer) or ["the"]
    token = rng.choice([rng.choice(tokens), rng.choice(tokens)[:1], str(rng.randint(0, 9))])
    return rng.choice((" ", "")).join([token] * rng.randint(8, 30))


def _contradicted(answer: str, rng: random.Random) -> tuple[str, str] | None:
    numbers = re.findall(r"\d+", answer)
    if numbers:
        changed = re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(1, 9)), answer)
        return changed, "gives wrong numbers, so its answer is incorrect"
    if len(answer.split()) < 4:
        return None
    negation = "However, none of the above is actually true, and the opposite is correct."
    return f"{answer} {negation}", "contradicts itself by denying its own answer at the end"


def _ungrammatical(answer: str, rng: random.Random) -> str | None:
    words = [w for w in answer.split() if w.lower() not in _FUNCTION_WORDS]
    if len(words) < 5:
        return None
    shuffled = words[:]
    while shuffled == words:
        rng.shuffle(shuffled)
    return " ".join(shuffled).lower()


def _verbose(answer: str, rng: random.Random) -> str:
    filler = rng.sample(_FILLER, 3)
    return f"{filler[0]} {filler[1]} {answer} {filler[2]}"


def _incomplete(answer: str) -> str | None:
    sentences = _sentences(answer)
    if len(sentences) < 2 or len(" ".join(sentences[1:]).split()) < 4:
        return None
    return sentences[0]


def _equivalent(answer: str, rng: random.Random) -> str:
    return rng.choice(_LEAD_INS) + answer


def _record(task: SeedTask, good: str, bad: str, good_first: bool, why: str) -> JudgeRecord:
    """A pair where `good` wins; `why` completes "Response N ..." for the worse response."""
    winner, loser = ("1", "2") if good_first else ("2", "1")
    reason = (
        f"Response {winner} is better. Response {winner} answers the instruction correctly, "
        f"while Response {loser} {why}."
    )
    first, second = (good, bad) if good_first else (bad, good)
    return JudgeRecord(task.instruction, task.input, first, second, winner, reason, task.output)


def _tie(task: SeedTask, first: str, second: str, reason: str) -> JudgeRecord:
    return JudgeRecord(task.instruction, task.input, first, second, "Tie", reason, task.output)


def build_synthetic_records(
    tasks: Iterable[SeedTask], seed: int = 0, exclude: Iterable[str] = ()
) -> list[JudgeRecord]:
    """One pair per applicable kind (module table) per task; tasks whose instruction is in
    `exclude` (e.g. the evaluation test set's) are skipped."""
    excluded = {text.strip() for text in exclude}
    tasks = [task for task in tasks if task.instruction not in excluded]
    if len(tasks) < 3:
        raise InputError("synthetic judge data needs at least 3 seed tasks")
    rng = random.Random(seed)
    records: list[JudgeRecord] = []
    for task in tasks:
        answer = task.output
        others = [t.output for t in tasks if t.output != answer]
        if not others:
            continue
        candidates: list[tuple[str, str | None, str]] = [
            ("truncated", _truncated(answer, rng), "stops mid-sentence and leaves it unfinished"),
            ("repetitive", _repetitive(answer, rng), "repeats the same words over and over"),
            ("degenerate", _degenerate(answer, rng), "is broken: one token repeated over and over"),
            ("off_topic", rng.choice(others), "is irrelevant: it answers a different task"),
            (
                "ungrammatical",
                _ungrammatical(answer, rng),
                "is ungrammatical and unclear: its words are jumbled",
            ),
            ("verbose", _verbose(answer, rng), "is not concise: it pads the answer with filler"),
            (
                "incomplete",
                _incomplete(answer),
                "is incomplete: it gives only the first part of the answer",
            ),
            (
                "evasive",
                rng.choice(_EVASIONS),
                "does not follow the instruction: it avoids giving an answer",
            ),
        ]
        contradicted = _contradicted(answer, rng)
        if contradicted is not None:
            candidates.append(("contradicted", *contradicted))
        for _kind, bad, why in candidates:
            if bad is not None and bad.strip() != answer.strip():
                records.append(_record(task, answer, bad, rng.random() < 0.5, why))
        records.append(
            _tie(
                task,
                *((answer, _equivalent(answer, rng))[:: rng.choice((1, -1))]),
                "Both responses give the same correct answer, equally clear and complete.",
            )
        )
    return records
