"""The task world: instructions a program can judge, the text a model is pretrained on, demonstrations, and the
labelers (a clean one that scores, a noisy one that ranks).

Five small task families, each with partial credit, so a reward model has something graded to learn:

- add:     "What is 7 plus 5?"                 -> "12"      (numbers up to ADD_MAX)
- fact:    "Where does Anna live?"             -> "Anna lives in Rome."   (facts stated only in pretraining text,
           asked in three phrasings each)
- reverse: "Reverse: cup sun box"              -> "box sun cup"
- sort:    "Sort: 22 7 19"                     -> "7 19 22"  (numbers up to SORT_MAX)
- list:    "Name 3 colors, starting with red." -> "red blue green"

The world is small on purpose (16 people, 6 cities, 6 pets, sums of one-digit numbers): a 4-layer, 128-wide model
pretrained for ~6 minutes on a CPU learns all 32 facts and most sums, so its samples are right often enough, and
wrong in ways a reward model of its own size can tell apart. Everything is drawn from one `random.Random(seed)`;
the facts (who lives where, who owns which pet) are the world's own, so nothing here comes from GPT-2's real
training data.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack", "Kate", "Leo", "Mia",
         "Noah", "Olga", "Paul"]
CITIES = ["Rome", "Paris", "Berlin", "Madrid", "Vienna", "Oslo"]
PETS = ["cat", "dog", "horse", "rabbit", "parrot", "goat"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown", "orange", "purple"]
WORDS = ["sun", "tree", "cup", "hat", "box", "pen", "car", "fish", "moon", "book"]
ADD_MAX = 9  # sums of two numbers up to this
SORT_MAX = 30  # numbers to sort are drawn from 1..SORT_MAX
LISTS = {"colors": COLORS, "pets": PETS, "cities": CITIES}
HOME_QUESTIONS = ("Where does {name} live?", "In which city does {name} live?", "What city is {name} from?")
PET_QUESTIONS = ("What pet does {name} have?", "Which animal does {name} keep?", "What animal does {name} own?")
FAMILIES = ("add", "fact", "reverse", "sort", "list")
NUMBER = re.compile(r"-?\d+")


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
        if family == "add":
            a, b = rng.randint(0, ADD_MAX), rng.randint(0, ADD_MAX)
            return Task(family, f"What is {a} plus {b}?", str(a + b))
        if family == "fact":
            name = rng.choice(NAMES)
            if rng.random() < 0.5:
                question = rng.choice(HOME_QUESTIONS).format(name=name)
                return Task(family, question, f"{name} lives in {self.home[name]}.")
            return Task(family, rng.choice(PET_QUESTIONS).format(name=name), f"{name} has a {self.pet[name]}.")
        if family == "reverse":
            words = rng.sample(WORDS, rng.randint(3, 4))
            return Task(family, "Reverse: " + " ".join(words), " ".join(reversed(words)))
        if family == "sort":
            numbers = rng.sample(range(1, SORT_MAX + 1), rng.randint(3, 4))
            return Task(family, "Sort: " + " ".join(map(str, numbers)), " ".join(map(str, sorted(numbers))))
        n, kind = rng.randint(2, 5), rng.choice(sorted(LISTS))
        items = rng.sample(LISTS[kind], n)
        return Task("list", f"Name {n} {kind}, starting with {items[0]}.", " ".join(items))

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
        if task.family == "add":
            numbers = NUMBER.findall(response)
            if not numbers:
                return 0.0
            miss = abs(int(numbers[0]) - int(task.answer))
            credit = {0: 1.0, 1: 0.5, 2: 0.25}.get(miss, 0.0)
            return credit * (1.0 if response == numbers[0] else 0.6)  # extra words cost
        if task.family == "fact":
            truth = task.answer.split()[-1].rstrip(".")
            pool = CITIES if truth in CITIES else PETS
            said = [w for w in re.findall(r"[A-Za-z]+", response) if w in pool]
            subject = task.answer.split()[0]
            form = 0.2 * response.startswith(subject) + 0.1 * response.endswith(".")
            if said == [truth]:
                return min(1.0, 0.7 + form)
            return form if len(said) == 1 else 0.0
        if task.family in ("reverse", "sort"):
            return positional_credit(task.answer.split(), response.split())
        n = int(NUMBER.findall(task.prompt)[0])
        pool = LISTS[task.prompt.split()[2].rstrip(",")]
        words = response.replace(",", " ").split()
        valid = len({w for w in words if w in pool})
        first = task.answer.split()[0]
        credit = min(valid, n) / n * (1.0 if words[:1] == [first] else 0.7)
        return max(0.0, credit - 0.25 * abs(len(words) - n))

    def noisy_scores(self, tasks: list[Task], responses: list[str], rng: random.Random, noise: float) -> list[float]:
        """The noisy labeler: the clean score plus N(0, noise) (disagrees with the clean one on some pairs)."""
        return [self.score(t, r) + rng.gauss(0.0, noise) for t, r in zip(tasks, responses)]

    # ----- text

    def pretraining_documents(self, count: int, seed: int) -> list[str]:
        """Plain text that states every fact many times and shows each family's format (not the Q/A template)."""
        rng = random.Random(seed)
        return ["\n".join(self.sentence(rng) for _ in range(rng.randint(6, 12))) for _ in range(count)]

    def sentence(self, rng: random.Random) -> str:
        kind = rng.randrange(6)
        name = rng.choice(NAMES)
        if kind == 0:
            return f"{name} lives in {self.home[name]}."
        if kind == 1:
            return f"{name} has a {self.pet[name]}."
        if kind == 2:
            a, b = rng.randint(0, ADD_MAX), rng.randint(0, ADD_MAX)
            return f"{a} plus {b} is {a + b}."
        if kind == 3:
            words = rng.sample(WORDS, rng.randint(3, 4))
            return f"The words {' '.join(words)} backwards are {' '.join(reversed(words))}."
        if kind == 4:
            numbers = rng.sample(range(1, SORT_MAX + 1), rng.randint(3, 4))
            return f"The numbers {' '.join(map(str, numbers))} in order are {' '.join(map(str, sorted(numbers)))}."
        n, kind = rng.randint(2, 5), rng.choice(sorted(LISTS))
        return f"Here are {n} {kind}: {' '.join(rng.sample(LISTS[kind], n))}."

    def demonstration(self, task: Task, rng: random.Random, error_rate: float) -> str:
        """What a hired demonstrator writes: the answer, or with probability `error_rate` a plausible mistake."""
        if rng.random() >= error_rate:
            return task.answer
        if task.family == "add":
            return str(int(task.answer) + rng.choice([-2, -1, 1, 2]))
        if task.family == "fact":
            pool = CITIES if task.answer.endswith(tuple(c + "." for c in CITIES)) else PETS
            wrong = rng.choice([x for x in pool if x not in task.answer])
            return " ".join(task.answer.split()[:-1] + [wrong + "."])
        words = task.answer.split()
        if task.family == "list":
            pool = LISTS[task.prompt.split()[2].rstrip(",")]
            others = rng.sample([w for w in pool if w != words[0]], len(words))
            return " ".join([words[0]] + others[: len(words) - 1 + rng.choice([-1, 1])])
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)


def positional_credit(want: list[str], got: list[str]) -> float:
    """Share of positions that hold the right item, over the longer of the two lists."""
    if not got:
        return 0.0
    hits = sum(a == b for a, b in zip(want, got))
    return hits / max(len(want), len(got))


def pairwise_agreement(clean: list[float], noisy: list[float]) -> tuple[int, int]:
    """(agreeing, counted) over the pairs whose clean scores differ."""
    agree = total = 0
    for i in range(len(clean)):
        for j in range(i + 1, len(clean)):
            if clean[i] != clean[j]:
                total += 1
                agree += (clean[i] > clean[j]) == (noisy[i] > noisy[j])
    return agree, total
