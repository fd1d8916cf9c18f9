"""The stages of the miniature InstructGPT run, each resumable, and the settings that size them."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from minigpt.train import STATE_FILE, PPOConfig, train_ppo

from . import evaluate as ev
from .report import write_report
from .world import World, pairwise_agreement

TEMPLATE = {"name": "mini-qa", "prompt": "Q: {instruction}\nA:", "prompt_with_input": "Q: {instruction}\n{input}\nA:"}
DOC = "<doc>"  # separates the pretraining documents in one file


@dataclass(frozen=True)
class Settings:
    """Sizes and hyper-parameters, chosen for a 2-core CPU (26 min on a 2-core EPYC); `scaled` multiplies sizes."""

    seed: int = 0
    start: str | None = None  # a model to start SFT from instead of pretraining (e.g. gpt2)
    device: str = "auto"
    n_layer: int = 4  # the model pretrained from scratch: GPT-2's architecture and tokenizer, smaller
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128
    pretrain_block: int = 64  # tokens per pretraining window (the documents are ~90 tokens)
    documents: int = 3000  # pretraining documents (~90 tokens each)
    pretrain_steps: int = 600  # of 16 x 64 tokens at lr 6e-3 (300 x 16 x 128 at 2e-3 learned no facts)
    demonstrations: int = 2500  # SFT records (noisy on purpose)
    demo_error_rate: float = 0.3  # share of demonstrations with a plausible mistake
    sft_epochs: float = 6
    comparison_prompts: int = 3000  # prompts ranked for the reward model (more helped more than more epochs)
    k: int = 4  # responses ranked per prompt (InstructGPT: 4 to 9)
    labeler_agreement: float = 0.75  # two noisy labelers agree with each other on this share of pairs (as
    # InstructGPT's labelers did, 73-77%); each then agrees with the clean one on ~0.83 of them
    ppo_prompts: int = 2000
    ppo_steps: int = 100
    ppo_batch: int = 32
    hack_steps: int = 60  # the beta = 0 run
    segments: int = 5  # labeler checkpoints along each PPO run
    heldout: int = 120  # held-out prompts for the table (30 per family, of the world's 320)
    demo_share: float = 1 / 3  # of the other prompts, the share kept for demonstrations; the rest are the RL
    # prompts (comparisons and PPO), as InstructGPT's 13k SFT prompts against 33k RM and 31k PPO prompts
    best_of: int = 8
    eval_samples: int = 6  # samples per held-out prompt and model; a prompt's score is their mean
    temperature: float = 0.7  # sampling for rollouts and evaluation (and PPO's log-probs)
    comparison_temperature: float = 1.0  # the samples labelers rank: more of them differ than at 0.7
    max_new_tokens: int = 16
    kl_coef: float = 0.2
    ppo_lr: float = 1e-4
    hack_lr: float = 3e-4  # the beta = 0 run also steps 3x harder, to over-optimise within hack_steps
    ptx_coef: float = 1.0
    dpo_beta: float = 0.5

    @classmethod
    def scaled(cls, scale: float, **fields) -> "Settings":
        base = cls(**fields)
        sized = ("documents", "pretrain_steps", "demonstrations", "comparison_prompts", "ppo_prompts", "ppo_steps",
                 "hack_steps", "heldout")
        return dataclasses.replace(base, **{name: max(4, round(getattr(base, name) * scale)) for name in sized})


class Pipeline:
    def __init__(self, out: Path, settings: Settings) -> None:
        self.out, self.s = out, settings
        self.world = World(settings.seed)
        self.data = out / "data"
        self.stages_file = out / "stages.json"
        self.out.mkdir(parents=True, exist_ok=True)
        saved = json.loads(self.stages_file.read_text()) if self.stages_file.is_file() else {}
        if saved.get("settings") not in (None, dataclasses.asdict(settings)):
            raise SystemExit(f"{out} was run with other settings ({self.stages_file}); choose another --out")
        self.state = {"settings": dataclasses.asdict(settings), "stages": saved.get("stages", {})}

    # ----- bookkeeping

    def stage(self, name: str, work) -> dict:
        """Run `work()` unless the stage is recorded as done; record its result (JSON) and how long it took."""
        done = self.state["stages"].get(name)
        if done is not None:
            print(f"[{name}] done before, skipped", file=sys.stderr)
            return done["result"]
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        result = work()
        took = time.perf_counter() - started
        self.state["stages"][name] = {"result": result, "seconds": round(took, 1)}
        tmp = self.stages_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(self.stages_file)
        print(f"[{name}] done in {took:.0f} s", file=sys.stderr, flush=True)
        return result

    def cli(self, command: str, *args: str) -> None:
        """Run one of minigpt's CLIs (as `python -m minigpt.cli.NAME`), printing the command."""
        argv = [sys.executable, "-m", f"minigpt.cli.{command}", *args, "--device", self.s.device]
        print("  $ minigpt-" + command + " " + " ".join(args), file=sys.stderr, flush=True)
        if subprocess.run(argv).returncode != 0:
            raise SystemExit(f"minigpt-{command} failed (its error is above); fix it and run the same command "
                             "again: finished stages are kept")

    def path(self, name: str) -> str:
        return str(self.out / name)

    # ----- the run

    def run(self) -> None:
        s = self.s
        self.stage("world", self.write_world)
        self.heldout = self.world.tasks(s.heldout, seed=s.seed * 1000 + 3)
        if s.start is None:
            self.stage("pretrain", self.pretrain)
        self.stage("sft", self.sft)
        self.stage("comparisons", self.comparisons)
        self.stage("reward_model", self.reward_model)
        self.stage("ppo", lambda: self.ppo("ppo", s.kl_coef, s.ppo_steps))
        self.stage("ppo_ptx", lambda: self.ppo("ppo_ptx", s.kl_coef, s.ppo_steps, ptx=True))
        self.stage("ppo_beta0", lambda: self.ppo("ppo_beta0", 0.0, s.hack_steps, lr=s.hack_lr))
        self.stage("dpo", self.dpo)
        results = self.stage("evaluate", self.evaluate)
        write_report(self.out, self.state, results)

    def start_model(self) -> str:
        return self.s.start or self.path("pretrained")

    def write_world(self) -> dict:
        s, world = self.s, self.world
        self.data.mkdir(parents=True, exist_ok=True)
        corpus = self.data / "corpus"
        corpus.mkdir(exist_ok=True)
        docs = world.pretraining_documents(s.documents, seed=s.seed * 1000 + 1)
        (corpus / "world.txt").write_text(f"\n{DOC}\n".join(docs) + "\n", encoding="utf-8")
        (self.data / "template.json").write_text(json.dumps(TEMPLATE, indent=2) + "\n")
        model = {"n_layer": s.n_layer, "n_head": s.n_head, "n_embd": s.n_embd, "n_positions": s.n_positions,
                 "vocab_size": 50257}
        (self.data / "model.json").write_text(json.dumps(model, indent=2) + "\n")
        heldout, sft_prompts, rl_prompts = self.prompt_sets()
        rng = random.Random(s.seed * 1000 + 2)
        demos = world.tasks(s.demonstrations, seed=s.seed * 1000 + 4, exclude=heldout | rl_prompts, distinct=False)
        rows = [{"prompt": t.prompt, "response": world.demonstration(t, rng, s.demo_error_rate)} for t in demos]
        write_jsonl(self.data / "sft.jsonl", rows)
        demo_quality = sum(world.score(t, r["response"]) for t, r in zip(demos, rows)) / len(rows)
        prompts = world.tasks(s.ppo_prompts, seed=s.seed * 1000 + 5, exclude=heldout | sft_prompts, distinct=False)
        write_jsonl(self.data / "prompts.jsonl", [{"prompt": t.prompt} for t in prompts])
        return {"documents": len(docs), "demonstrations": len(rows), "demo_quality": demo_quality,
                "ppo_prompts": len(prompts), "heldout": s.heldout, "distinct_sft_prompts": len(sft_prompts),
                "distinct_rl_prompts": len(rl_prompts)}

    def prompt_sets(self) -> tuple[set[str], set[str], set[str]]:
        """(held-out, demonstration, RL) prompts: three disjoint sets. The demonstrations never show an RL prompt,
        so the comparisons and PPO see prompts SFT has not memorised, like the held-out ones (InstructGPT's SFT, RM
        and PPO datasets are different prompts too). With one shared set SFT scored ~0.9 on PPO's prompts against
        ~0.65 held out, and PPO had nothing to learn there that carried over."""
        heldout = {t.prompt for t in self.world.tasks(self.s.heldout, seed=self.s.seed * 1000 + 3)}
        sft_prompts, rl_prompts = self.world.split(heldout, seed=self.s.seed * 1000 + 13,
                                                   first_share=self.s.demo_share)
        return heldout, sft_prompts, rl_prompts

    def pretrain(self) -> dict:
        s = self.s
        self.cli("pretrain", "--text", str(self.data / "corpus"), "--doc-separator", DOC,
                 "--model", str(self.data / "model.json"), "--random-init", "--out", self.path("pretrained"),
                 "--max-steps", str(s.pretrain_steps), "--batch-size", "16", "--block-size", str(min(s.pretrain_block, s.n_positions)),
                 "--lr", "6e-3", "--warmup-steps", "30", "--eval-every", str(max(1, s.pretrain_steps // 4)),
                 "--seed", str(s.seed), "--quiet")
        return final_eval(self.out / "pretrained")

    def sft(self) -> dict:
        s = self.s
        self.cli("finetune", "--data", str(self.data / "sft.jsonl"), "--model", self.start_model(),
                 "--template", str(self.data / "template.json"), "--out", self.path("sft"), "--epochs", str(s.sft_epochs),
                 "--batch-size", "32", "--lr", "1e-3", "--eval-fraction", "0.05", "--seed", str(s.seed), "--quiet")
        return final_eval(self.out / "sft")

    def comparisons(self) -> dict:
        """K SFT samples per prompt, ranked by the noisy labeler (K-wise, as the paper); the same for held-out
        prompts, where both labelers' scores are kept to measure the reward model."""
        s, world = self.s, self.world
        rng = random.Random(s.seed * 1000 + 6)
        heldout, sft_prompts, _ = self.prompt_sets()
        tasks = world.tasks(s.comparison_prompts, seed=s.seed * 1000 + 7, exclude=heldout | sft_prompts,
                            distinct=False)
        samples = ev.sample_k(self.path("sft"), tasks, s.k, temperature=s.comparison_temperature,
                              max_new_tokens=s.max_new_tokens, seed=s.seed * 1000 + 8)
        clean = [[world.score(t, r) for r in rs] for t, rs in zip(tasks, samples)]
        noise = calibrate_noise(clean, s.labeler_agreement, rng)
        second = random.Random(s.seed * 1000 + 14)  # a second labeler, only to report how often two agree
        records, agree, between, total = [], 0, 0, 0
        for task, responses, scores in zip(tasks, samples, clean):
            noisy = [c + rng.gauss(0.0, noise) for c in scores]
            a, n = pairwise_agreement(scores, noisy)
            b, _ = pairwise_agreement(scores, noisy, [c + second.gauss(0.0, noise) for c in scores])
            agree, between, total = agree + a, between + b, total + n
            ranked = unique_ranked(responses, noisy)
            if len(ranked) >= 2:
                records.append({"prompt": task.prompt, "ranked": ranked})
        write_jsonl(self.data / "comparisons.jsonl", records)
        held_samples = ev.sample_k(self.path("sft"), self.heldout, s.k, temperature=s.temperature,
                                   max_new_tokens=s.max_new_tokens, seed=s.seed * 1000 + 9)
        held = [{"prompt": t.prompt, "responses": rs, "clean": [world.score(t, r) for r in rs],
                 "noisy": [world.score(t, r) + rng.gauss(0.0, noise) for r in rs]}
                for t, rs in zip(self.heldout, held_samples)]
        write_jsonl(self.data / "comparisons_heldout.jsonl", held)
        return {"records": len(records), "noise": noise, "labeler_agreement": agree / max(total, 1),
                "labelers_agree_with_each_other": between / max(total, 1), "pairs": total}

    def reward_model(self) -> dict:
        s = self.s
        self.cli("reward", "--data", str(self.data / "comparisons.jsonl"), "--model", self.path("sft"),
                 "--out", self.path("rm"), "--epochs", "2", "--batch-size", "16", "--lr", "5e-4",
                 "--eval-fraction", "0.1", "--normalize-on", str(self.data / "sft.jsonl"), "--seed", str(s.seed),
                 "--quiet")
        held = read_jsonl(self.data / "comparisons_heldout.jsonl")
        tasks = {t.prompt: t for t in self.heldout}
        flat = ev.reward_scores(self.path("rm"), [tasks[r["prompt"]] for r in held for _ in r["responses"]],
                                [response for r in held for response in r["responses"]])  # one load, one pass
        rewards, start = [], 0
        for row in held:
            rewards.append(flat[start: start + len(row["responses"])])
            start += len(row["responses"])
        clean, clean_pairs = ev.ranking_accuracy(rewards, [r["clean"] for r in held])
        family = {t.prompt: t.family for t in self.heldout}
        by_family = {}
        for name in sorted({family[r["prompt"]] for r in held}):
            rows = [i for i, r in enumerate(held) if family[r["prompt"]] == name]
            by_family[name] = ev.ranking_accuracy([rewards[i] for i in rows], [held[i]["clean"] for i in rows])[0]
        noisy, noisy_pairs = ev.ranking_accuracy(rewards, [r["noisy"] for r in held])
        labeler, _ = ev.ranking_accuracy([r["noisy"] for r in held], [r["clean"] for r in held])
        print("  reward model accuracy vs the clean labeler (held-out): " + ", ".join(
            f"{k} {v:.2f}" for k, v in by_family.items()) + f"; all {clean:.3f}", file=sys.stderr, flush=True)
        return {"accuracy_clean": clean, "accuracy_clean_by_family": by_family, "accuracy_noisy": noisy,
                "pairs_clean": clean_pairs,
                "pairs_noisy": noisy_pairs, "noisy_labeler_vs_clean": labeler}

    def ppo(self, name: str, kl_coef: float, steps: int, *, ptx: bool = False, lr: float | None = None) -> dict:
        """PPO through the API, stopped every steps/segments to score held-out samples with the labeler and the
        reward model (the curves), then resumed exactly."""
        s = self.s
        extra = {"ptx_data": str(self.data / "corpus"), "ptx_coef": s.ptx_coef, "ptx_block_size": 64,
                 "ptx_batch_size": 8} if ptx else {}
        config = PPOConfig(data=str(self.data / "prompts.jsonl"), out=self.path(name), model=self.path("sft"),
                           reward_model=self.path("rm"), max_new_tokens=s.max_new_tokens,
                           temperature=s.temperature, kl_coef=kl_coef, max_steps=steps, batch_size=s.ppo_batch,
                           lr=lr or s.ppo_lr, eval_fraction=0.02, eval_every=steps, seed=s.seed, device=s.device,
                           **extra)
        every = max(1, steps // s.segments)
        curve = [self.checkpoint_point(self.path("sft"), 0)]
        print(f"  step 0 (SFT): labeler {curve[0]['labeler']:.3f}, reward model {curve[0]['reward']:.3f}",
              file=sys.stderr, flush=True)
        resume = (self.out / name / STATE_FILE).is_file()
        print(f"  PPO {name}: beta {kl_coef}, lr {lr or s.ppo_lr}, {steps} steps of {s.ppo_batch} rollouts"
              f"{', ptx' if ptx else ''} (minigpt.train.train_ppo)", file=sys.stderr, flush=True)
        asked: list[int] = []  # the steps where this loop asked for a stop (any other stop is the user's Ctrl-C)

        def pause(step: int) -> bool:
            if step % every:
                return False
            asked.append(step)
            return True

        while True:
            result = train_ppo(config, resume=resume, progress=False, log=lambda _: None, should_stop=pause)
            resume = True
            if result.interrupted and result.step not in asked:
                raise SystemExit(f"interrupted at PPO step {result.step}: run the same command again to resume")
            curve.append(self.checkpoint_point(self.path(name), result.step))
            point = curve[-1]
            print(f"  step {point['step']}/{steps}: labeler {point['labeler']:.3f}, reward model "
                  f"{point['reward']:.3f}, KL {point['kl']:.2f}", file=sys.stderr, flush=True)
            if not result.interrupted:
                return {"curve": curve}

    def checkpoint_point(self, directory: str, step: int) -> dict:
        """Mean labeler score, reward-model score and KL to SFT of samples on (a part of) the held-out prompts."""
        s = self.s
        tasks = self.heldout[: max(20, len(self.heldout) // 3)]
        seed = s.seed * 1000 + 11
        samples = ev.sample(directory, tasks, self.world, temperature=s.temperature, max_new_tokens=s.max_new_tokens,
                            seed=seed)
        rewards = ev.reward_scores(self.path("rm"), tasks, samples.responses)
        kl = mean_kl(directory, self.path("sft"), tasks, samples.responses, s.temperature)
        return {"step": step, "labeler": samples.mean, "reward": sum(rewards) / len(rewards), "kl": kl}

    def dpo(self) -> dict:
        s = self.s
        self.cli("dpo", "--data", str(self.data / "comparisons.jsonl"), "--model", self.path("sft"),
                 "--out", self.path("dpo"), "--epochs", "1", "--batch-size", "16", "--lr", "2e-4", "--beta",
                 str(s.dpo_beta), "--eval-fraction", "0.1", "--seed", str(s.seed), "--quiet")
        return final_eval(self.out / "dpo")

    def evaluate(self) -> dict:
        """The table: each model's samples on every held-out prompt, scored by the clean labeler."""
        s, world = self.s, self.world
        seeds = [s.seed * 1000 + 12 + 7919 * r for r in range(s.eval_samples)]
        kwargs = dict(temperature=s.temperature, max_new_tokens=s.max_new_tokens)
        tasks = self.heldout * s.eval_samples  # [eval_samples * prompts]: draw r of every prompt, then draw r + 1
        rows = {}
        models = {"pretrained": self.start_model(), "SFT": self.path("sft"), "PPO": self.path("ppo"),
                  "PPO-ptx": self.path("ppo_ptx"), "DPO": self.path("dpo"), "PPO beta=0": self.path("ppo_beta0")}
        samples = {name: concat([ev.sample(path, self.heldout, world, seed=seed, **kwargs) for seed in seeds])
                   for name, path in models.items()}
        samples[f"best-of-{s.best_of}"] = concat([ev.best_of(self.path("sft"), self.path("rm"), self.heldout, world,
                                                             s.best_of, seed=seed, **kwargs) for seed in seeds])
        sft = per_prompt_means(samples["SFT"].scores, len(self.heldout))
        for name, drawn in samples.items():
            path = models.get(name, self.path("sft"))
            rewards = ev.reward_scores(self.path("rm"), tasks, drawn.responses)
            kl = mean_kl(path, self.path("sft"), tasks, drawn.responses, s.temperature) \
                if name not in ("pretrained", f"best-of-{s.best_of}") else None
            got = ev.Samples(drawn.responses[: len(self.heldout)], per_prompt_means(drawn.scores, len(self.heldout)))
            diff, diff_se = ev.paired_difference(got.scores, sft)
            rows[name] = {"labeler": got.mean, "win_vs_sft": ev.win_rate(got.scores, sft),
                          "minus_sft": diff, "minus_sft_se": diff_se, "scores": got.scores,
                          "reward": sum(rewards) / len(rewards), "kl_to_sft": kl,
                          "by_family": by_family(self.heldout, got.scores),
                          "examples": [{"prompt": t.prompt, "response": r, "score": sc}  # first draws
                                       for t, r, sc in list(zip(self.heldout, drawn.responses, drawn.scores))[:5]]}
        return {"models": rows}


# ----- helpers


def concat(draws: list[ev.Samples]) -> ev.Samples:
    return ev.Samples([r for d in draws for r in d.responses], [x for d in draws for x in d.scores])


def per_prompt_means(scores: list[float], prompts: int) -> list[float]:
    """Scores laid out draw after draw ([draws * prompts]) -> each prompt's mean over its draws."""
    draws = len(scores) // prompts
    return [sum(scores[r * prompts + i] for r in range(draws)) / draws for i in range(prompts)]


def final_eval(directory: Path) -> dict:
    state = json.loads((directory / STATE_FILE).read_text())
    return {"eval": state["eval_metrics"][-1][1] if state.get("eval_metrics") else None}


def mean_kl(policy: str, reference: str, tasks, responses: list[str], temperature: float) -> float:
    """Mean over responses sampled from `policy` of log pi(y|x) - log pi_SFT(y|x): a Monte-Carlo KL(pi || SFT)."""
    if Path(policy).resolve() == Path(reference).resolve():
        return 0.0
    mine = ev.sequence_logprobs(policy, tasks, responses, temperature=temperature)
    ref = ev.sequence_logprobs(reference, tasks, responses, temperature=temperature)
    return sum(a - b for a, b in zip(mine, ref)) / len(mine)


def by_family(tasks, scores: list[float]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for task, score in zip(tasks, scores):
        sums.setdefault(task.family, []).append(score)
    return {family: sum(v) / len(v) for family, v in sums.items()}


def calibrate_noise(clean: list[list[float]], target: float, rng: random.Random) -> float:
    """The labeler noise (std of N(0, sigma) added to clean scores) at which two independent noisy labelers agree
    with each other on `target` of the pairs whose clean scores differ, found by bisection on fixed draws.

    `target` is an inter-labeler agreement, as InstructGPT reports (73-77%): calibrating one labeler's agreement
    with the truth to 75% instead makes it as unreliable as the disagreement between two labelers, twice the noise
    (an earlier version of this run did that; its reward models reached 0.60-0.66 and best-of-8 gained nothing)."""
    draws = [([rng.gauss(0.0, 1.0) for _ in row], [rng.gauss(0.0, 1.0) for _ in row]) for row in clean]

    def agreement(sigma: float) -> float:
        agree = total = 0
        for row, (first, second) in zip(clean, draws):
            a, n = pairwise_agreement(row, [c + sigma * z for c, z in zip(row, first)],
                                      [c + sigma * z for c, z in zip(row, second)])
            agree, total = agree + a, total + n
        return agree / max(total, 1)

    low, high = 0.0, 2.0
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if agreement(mid) > target else (low, mid)
    return (low + high) / 2


def unique_ranked(responses: list[str], scores: list[float]) -> list[str]:
    """Distinct non-empty responses, best first by `scores` (a duplicate keeps its first score)."""
    best: dict[str, float] = {}
    for response, score in zip(responses, scores):
        if response.strip():
            best.setdefault(response, score)
    return sorted(best, key=lambda r: -best[r])


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
