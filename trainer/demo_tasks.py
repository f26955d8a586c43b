"""The embedded demo instruction set: templated tasks with checkable answers, in several styles.

Every site draws its own shard from its seed; validation tasks come from a part of the task
space that no shard draws from, so a site never trains on a validation task.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from trainer.data import InstructionRecord

WORDS = (
    "apple", "banana", "river", "planet", "garden", "window", "silver", "rocket", "pencil",
    "forest", "castle", "butter", "candle", "dragon", "engine", "falcon", "guitar", "harbor",
    "island", "jacket", "kitten", "ladder", "mirror", "needle", "orange", "pepper", "rabbit",
    "saddle", "tomato", "violet", "walnut", "yellow", "bridge", "cotton", "meadow", "summer",
    "winter", "marble", "copper", "lemon", "tiger", "cloud", "stone", "music", "paper",
)  # fmt: skip
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Japan": "Tokyo", "Canada": "Ottawa", "Australia": "Canberra",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Peru": "Lima", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Poland": "Warsaw", "Austria": "Vienna", "Greece": "Athens", "Turkey": "Ankara",
    "India": "New Delhi", "China": "Beijing", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Mexico": "Mexico City", "Chile": "Santiago", "Ireland": "Dublin", "Hungary": "Budapest",
    "Denmark": "Copenhagen", "Morocco": "Rabat", "Ghana": "Accra", "Nepal": "Kathmandu",
}  # fmt: skip
UNITS = (
    ("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("kilograms", "grams", 1000),
    ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24),
    ("weeks", "days", 7), ("liters", "milliliters", 1000),
)  # fmt: skip
ARITHMETIC = (("+", "sum", lambda a, b: a + b), ("-", "difference", lambda a, b: a - b),
              ("*", "product", lambda a, b: a * b))  # fmt: skip

Task = tuple[str, str, str]  # instruction, input, output
MAX_EXAMPLES = 10_000


def _arithmetic(rng: random.Random) -> Task:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    symbol, name, apply = rng.choice(ARITHMETIC)
    answer = apply(a, b)
    return rng.choice(
        [
            (f"What is {a} {symbol} {b}?", "", str(answer)),
            (
                f"Compute the {name} of the two numbers, in the given order.",
                f"{a}, {b}",
                str(answer),
            ),
            (f"Solve: {a} {symbol} {b} =", "", f"{a} {symbol} {b} = {answer}"),
        ]
    )


def _reverse(rng: random.Random) -> Task:
    word = rng.choice(WORDS)
    backwards = word[::-1]
    return rng.choice(
        [
            (f"Reverse the letters of the word '{word}'.", "", backwards),
            ("Write the given word backwards.", word, backwards),
            (f"What is '{word}' spelled backwards?", "", f"'{word}' backwards is '{backwards}'."),
        ]
    )


def _capital(rng: random.Random) -> Task:
    country, capital = rng.choice(sorted(CAPITALS.items()))
    return rng.choice(
        [
            (f"What is the capital of {country}?", "", capital),
            ("Name the capital city of the given country.", country, capital),
            (
                f"Which city is the capital of {country}?",
                "",
                f"The capital of {country} is {capital}.",
            ),
        ]
    )


def _convert(rng: random.Random) -> Task:
    source, target, factor = rng.choice(UNITS)
    amount = rng.randint(2, 50)
    result = amount * factor
    return rng.choice(
        [
            (f"Convert {amount} {source} to {target}.", "", f"{result} {target}"),
            (f"How many {target} are in {amount} {source}?", "", str(result)),
            (
                f"Convert the quantity to {target}.",
                f"{amount} {source}",
                f"{amount} {source} is {result} {target}.",
            ),
        ]
    )


def _sort_words(rng: random.Random) -> Task:
    words = rng.sample(WORDS, rng.randint(3, 5))
    listed, ordered = ", ".join(words), ", ".join(sorted(words))
    return rng.choice(
        [
            ("Sort these words in alphabetical order.", listed, ordered),
            (f"Put the following words in alphabetical order: {listed}", "", ordered),
        ]
    )


def _count_letter(rng: random.Random) -> Task:
    word = rng.choice(WORDS)
    letter = rng.choice(word)
    count = word.count(letter)
    return rng.choice(
        [
            (f"How many times does the letter '{letter}' appear in '{word}'?", "", str(count)),
            (
                "Count how often the letter occurs in the word.",
                f"letter: {letter}\nword: {word}",
                str(count),
            ),
        ]
    )


def _largest(rng: random.Random) -> Task:
    numbers = rng.sample(range(1, 1000), rng.randint(2, 5))
    largest = str(max(numbers))
    if len(numbers) == 2:
        a, b = numbers
        return (f"Which number is larger, {a} or {b}?", "", largest)
    return ("Return the largest number in the list.", ", ".join(map(str, numbers)), largest)


def _upper_case(rng: random.Random) -> Task:
    phrase = " ".join(rng.sample(WORDS, rng.randint(2, 4)))
    return rng.choice(
        [
            ("Convert the text to upper case.", phrase, phrase.upper()),
            (f"Write '{phrase}' in capital letters.", "", phrase.upper()),
        ]
    )


TASKS: tuple[Callable[[random.Random], Task], ...] = (
    _arithmetic, _reverse, _capital, _convert, _sort_words, _count_letter, _largest, _upper_case,
)  # fmt: skip


def is_validation_task(instruction: str, input: str) -> bool:
    """About one task in eight is reserved for validation, by a hash of its text."""
    return hashlib.sha256(f"{instruction}\n{input}".encode()).digest()[0] % 8 == 0


def _draw(rng: random.Random, n: int, validation: bool) -> list[InstructionRecord]:
    if not 0 < n <= MAX_EXAMPLES:
        raise ValueError(f"the demo set holds 1 to {MAX_EXAMPLES} distinct examples, not {n}")
    records: dict[tuple[str, str], InstructionRecord] = {}
    while len(records) < n:
        instruction, input, output = rng.choice(TASKS)(rng)
        if is_validation_task(instruction, input) == validation:
            records.setdefault((instruction, input), InstructionRecord(instruction, input, output))
    return list(records.values())


def make_shard(site_seed: int, n: int) -> list[InstructionRecord]:
    """`n` distinct training examples; different seeds give different shards."""
    return _draw(random.Random(f"pandalm-fed/train/{site_seed}"), n, validation=False)


def make_validation_set(n: int, seed: int = 0) -> list[InstructionRecord]:
    """`n` distinct tasks no shard contains, with their answers so responses can be checked."""
    return _draw(random.Random(f"pandalm-fed/validation/{seed}"), n, validation=True)
