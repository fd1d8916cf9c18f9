"""The task world: instructions a program can judge, the text a model is pretrained on, demonstrations, and the
labelers (a clean one that scores, a noisy one that ranks).

Four small task families, each with partial credit, so a reward model has something graded to learn:

- fact:    "Where does Anna live?"             -> "Anna lives in Rome."   (facts stated only in pretraining text)
- list:    "Name 3 colors, starting with red." -> "red blue green"        (valid, distinct, the count, the start)
- repeat:  "Say cup 3 times."                  -> "cup cup cup"           (the word, the count)
- count:   "Count from 7 to 10."               -> "7 8 9 10"              (the share of positions right)

Chosen so that a reward model as small as the policy can judge them: recall, counting, copying a word. An earlier
world with arithmetic, sorting and reversing (the git history of this file) gave a reward model at chance on
those three, and neither best-of-8 nor PPO could beat SFT with it (docs/instructgpt-mini.md). The world is small
(30 people, 6 cities, 6 pets) so a 4-layer, 128-wide model pretrained for ~7 minutes on a CPU learns its facts.
Everything is drawn from one `random.Random(seed)`;
the facts (who lives where, who owns which pet) are the world's own, so nothing here comes from GPT-2's real
training data.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack", "Kate", "Leo", "Mia",
         "Noah", "Olga", "Paul", "Rosa", "Sam", "Tina", "Victor", "Wendy", "Yuri", "Zoe", "Adam", "Bella", "Carl",
         "Dora", "Eric", "Fiona", "George"]
CITIES = ["Rome", "Paris", "Berlin", "Madrid", "Vienna", "Oslo"]
PETS = ["cat", "dog", "horse", "rabbit", "parrot", "goat"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown"]
WORDS = ["sun", "tree", "cup", "hat", "box", "pen", "car", "fish", "moon", "book", "ball", "door", "lamp", "bird",
         "milk", "rain"]
COUNT_FROM = 20  # counting tasks start at 1..COUNT_FROM
LISTS = {"colors": COLORS, "pets": PETS, "cities": CITIES}
FAMILIES = ("fact", "list", "repeat", "count")


@dataclass(frozen=True)
class Task:
    """One instruction with what a perfect answer is (`answer`), and what the labeler needs to judge it."""

    family: str
    prompt: str
    answer: str


class World:
    """A seeded world: its facts, its tasks, its pretraining text, its demonstrations and its labelers."""

    def __init__(self, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.home = {name: rng.choice(CITIES) for name in NAMES}
        self.pet = {name: rng.choice(PETS) for name in NAMES}

    # ----- tasks

    def task(self, rng: random.Random, family: str | None = None) -> Task:
        family = family or rng.choice(FAMILIES)
        if family == "fact":
            name = rng.choice(NAMES)
            home_question, pet_question = fact_prompts(name)
            if rng.random() < 0.5:
                return Task(family, home_question, f"{name} lives in {self.home[name]}.")
            return Task(family, pet_question, f"{name} has a {self.pet[name]}.")
        if family == "list":
            n, kind = rng.randint(2, 5), rng.choice(sorted(LISTS))
            items = rng.sample(LISTS[kind], n)
            return Task(family, list_prompt(n, kind, items[0]), " ".join(items))
        if family == "repeat":
            n, word = rng.randint(2, 6), rng.choice(WORDS)
            return Task(family, repeat_prompt(word, n), " ".join([word] * n))
        start, n = rng.randint(1, COUNT_FROM), rng.randint(2, 6)
        return Task("count", count_prompt(start, n), " ".join(map(str, range(start, start + n))))

    def prompts(self, family: str) -> list[str]:
        """Every prompt of `family` (the world is small enough to list them: 60 fact, 80 list, 80 repeat, 100 count)."""
        if family == "fact":
            return [q for name in NAMES for q in fact_prompts(name)]
        if family == "list":
            return [list_prompt(n, kind, start) for n in range(2, 6) for kind in sorted(LISTS) for start in LISTS[kind]]
        if family == "repeat":
            return [repeat_prompt(word, n) for word in WORDS for n in range(2, 7)]
        return [count_prompt(start, n) for start in range(1, COUNT_FROM + 1) for n in range(2, 7)]

    def split(self, exclude: set[str], seed: int, first_share: float = 0.5) -> tuple[set[str], set[str]]:
        """The prompts not in `exclude`, cut in two per family (seeded), `first_share` of them first: one part for
        the demonstrations, one for the comparisons and PPO, as InstructGPT's SFT, RM and PPO datasets hold
        different prompts."""
        rng, first, second = random.Random(seed), set(), set()
        for family in FAMILIES:
            rest = [q for q in self.prompts(family) if q not in exclude]
            rng.shuffle(rest)
            cut = round(len(rest) * first_share)
            first.update(rest[:cut])
            second.update(rest[cut:])
        return first, second

    def tasks(self, count: int, seed: int, exclude: set[str] = frozenset(), distinct: bool = True) -> list[Task]:
        """`count` prompts drawn with `seed`, families in turn, none of `exclude`; all different if `distinct`
        (held-out sets), else repeats allowed (training data: the fact questions are few)."""
        rng, seen, out = random.Random(seed), set(exclude), []
        for _ in range(100 * count):
            if len(out) == count:
                break
            task = self.task(rng, FAMILIES[len(out) % len(FAMILIES)])
            if task.prompt not in seen:
                if distinct:
                    seen.add(task.prompt)
                out.append(task)
        if len(out) < count:
            raise ValueError(f"the world has fewer than {count} distinct prompts to draw")
        return out

    # ----- the clean labeler

    def score(self, task: Task, response: str) -> float:
        """How good `response` is for `task`, in [0, 1], with partial credit (the program that plays the labeler)."""
        response = response.strip()
        if task.family == "fact":
            truth = task.answer.split()[-1].rstrip(".")
            pool = CITIES if truth in CITIES else PETS
            said = [w for w in re.findall(r"[A-Za-z]+", response) if w in pool]
            subject = task.answer.split()[0]
            form = 0.2 * response.startswith(subject) + 0.1 * response.endswith(".")
            if said == [truth]:
                return min(1.0, 0.7 + form)
            return form if len(said) == 1 else 0.0
        words = response.replace(",", " ").split()
        want = task.answer.split()
        if task.family == "list":
            pool = LISTS[task.prompt.split()[2].rstrip(",")]
            valid = len({w for w in words if w in pool})
            credit = min(valid, len(want)) / len(want) * (1.0 if words[:1] == want[:1] else 0.7)
            return max(0.0, credit - 0.25 * abs(len(words) - len(want)))
        if task.family == "repeat":
            right = sum(w == want[0] for w in words)
            return max(0.0, min(right, len(want)) / len(want) - 0.25 * abs(len(words) - len(want)))
        return positional_credit(want, words)

    def noisy_scores(self, tasks: list[Task], responses: list[str], rng: random.Random, noise: float) -> list[float]:
        """The noisy labeler: the clean score plus N(0, noise) (disagrees with the clean one on some pairs)."""
        return [self.score(t, r) + rng.gauss(0.0, noise) for t, r in zip(tasks, responses)]

    # ----- text

    def pretraining_documents(self, count: int, seed: int) -> list[str]:
        """Plain text that states every fact many times and shows each family's format (not the Q/A template)."""
        rng = random.Random(seed)
        return ["\n".join(self.sentence(rng) for _ in range(rng.randint(6, 12))) for _ in range(count)]

    def sentence(self, rng: random.Random) -> str:
        kind = rng.randrange(5)
        name = rng.choice(NAMES)
        if kind == 0:
            return f"{name} lives in {self.home[name]}."
        if kind == 1:
            return f"{name} has a {self.pet[name]}."
        if kind == 2:
            n, what = rng.randint(2, 5), rng.choice(sorted(LISTS))
            return f"Here are {n} {what}: {' '.join(rng.sample(LISTS[what], n))}."
        if kind == 3:
            n, word = rng.randint(2, 6), rng.choice(WORDS)
            return f"{name} said {word} {n} times: {' '.join([word] * n)}."
        start, n = rng.randint(1, COUNT_FROM), rng.randint(2, 6)
        return f"{name} counted from {start} to {start + n - 1}: {' '.join(map(str, range(start, start + n)))}."

    def demonstration(self, task: Task, rng: random.Random, error_rate: float) -> str:
        """What a hired demonstrator writes: the answer, or with probability `error_rate` a plausible mistake."""
        if rng.random() >= error_rate:
            return task.answer
        words = task.answer.split()
        if task.family == "fact":
            pool = CITIES if words[-1].rstrip(".") in CITIES else PETS
            wrong = rng.choice([x for x in pool if x not in task.answer])
            return " ".join(words[:-1] + [wrong + "."])
        if task.family == "list":
            pool = LISTS[task.prompt.split()[2].rstrip(",")]
            others = rng.sample([w for w in pool if w != words[0]], len(words))
            return " ".join([words[0]] + others[: len(words) - 1 + rng.choice([-1, 1])])
        if task.family == "repeat":
            return " ".join(words[:1] * (len(words) + rng.choice([-1, 1])))
        if rng.random() < 0.5:  # count: one number skipped or one too many
            return " ".join(words[:-1] + [str(int(words[-1]) + 1)])
        return " ".join(words + [str(int(words[-1]) + 1)])


# ----- the prompts' wording (one place for `World.task`, which draws them, and `World.prompts`, which lists them)


def fact_prompts(name: str) -> tuple[str, str]:
    return f"Where does {name} live?", f"What pet does {name} have?"


def list_prompt(n: int, kind: str, start: str) -> str:
    return f"Name {n} {kind}, starting with {start}."


def repeat_prompt(word: str, n: int) -> str:
    return f"Say {word} {n} times."


def count_prompt(start: int, n: int) -> str:
    return f"Count from {start} to {start + n - 1}."


def positional_credit(want: list[str], got: list[str]) -> float:
    """Share of positions that hold the right item, over the longer of the two lists."""
    if not got:
        return 0.0
    hits = sum(a == b for a, b in zip(want, got))
    return hits / max(len(want), len(got))


def pairwise_agreement(clean: list[float], noisy: list[float], other: list[float] | None = None) -> tuple[int, int]:
    """(agreeing, counted) over the pairs whose clean scores differ: how often `noisy` orders a pair as the clean
    labeler does, or, given `other` (a second noisy labeler), as `other` does."""
    reference = clean if other is None else other
    agree = total = 0
    for i in range(len(clean)):
        for j in range(i + 1, len(clean)):
            if clean[i] != clean[j]:
                total += 1
                agree += (reference[i] > reference[j]) == (noisy[i] > noisy[j])
    return agree, total
