"""PandaLM prompt and training target, byte-compatible with the released PandaLM-7B weights."""

from __future__ import annotations

from dataclasses import dataclass

SPECIAL_TOKENS: tuple[str, ...] = (
    "<unk>",
    "<pad>",
    "<s>",
    "</s>",
    "[PAD]",
    "<|endoftext|>",
    "[UNK]",
    "[CLS]",
    "[MASK]",
    "<|startofpiece|>",
    "<|endofpiece|>",
    "[gMASK]",
    "[sMASK]",
)

VERDICTS: tuple[str, ...] = ("1", "2", "Tie")

_HEAD_WITH_INPUT = (
    "Below are two responses for a given task. The task is defined by the Instruction with an "
    "Input that provides further context. Evaluate the responses and generate a reference answer "
    "for the task.\n\n"
)
_HEAD_NO_INPUT = (
    "Below are two responses for a given task. The task is defined by the Instruction. "
    "Evaluate the responses and generate a reference answer for the task.\n\n"
)


def clean_response(text: str) -> str:
    """Drop special-token strings and surrounding whitespace, as PandaLM's inference code does."""
    for token in SPECIAL_TOKENS:
        text = text.replace(token, "")
    return text.strip()


def build_prompt(instruction: str, input: str, response1: str, response2: str) -> str:
    """The judge prompt for one order of a pair; it ends right before the verdict."""
    r1, r2 = clean_response(response1), clean_response(response2)
    if input.strip():
        return (
            f"{_HEAD_WITH_INPUT}### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
            f"### Response 1:\n{r1}\n\n### Response 2:\n{r2}\n\n### Evaluation:\n"
        )
    return (
        f"{_HEAD_NO_INPUT}### Instruction:\n{instruction}\n\n"
        f"### Response 1:\n{r1}\n\n### Response 2:\n{r2}\n\n### Evaluation:\n"
    )


@dataclass(frozen=True)
class Pair:
    """Two responses to one task, the prompt's input; `response1` plays A and `response2` B."""

    instruction: str
    input: str
    response1: str
    response2: str

    def prompt(self, swapped: bool = False) -> str:
        first, second = (
            (self.response2, self.response1) if swapped else (self.response1, self.response2)
        )
        return build_prompt(self.instruction, self.input, first, second)


def build_target(result: str, reason: str, reference: str) -> str:
    """The text the judge is trained to produce after the prompt."""
    if result not in VERDICTS:
        raise ValueError(f"result must be one of {VERDICTS}, got {result!r}")
    return f"{result}\n\n### Reason: {reason}\n\n### Reference: {reference}\n"
