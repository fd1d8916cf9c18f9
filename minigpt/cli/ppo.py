"""`minigpt-ppo` / `scripts/ppo.py`: PPO against a reward model or a Python reward, with a KL penalty to the
start (SFT) policy (InstructGPT step 3)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..train import PPOConfig, train_ppo
from ..train.ppo import VALUE_MODELS
from .common import OneLineParser, run_cli
from .trainer import add_training_arguments, run_trainer

# (flag, config field, type, help); defaults come from PPOConfig
PPO_FLAGS: list[tuple[str, str, type, str]] = [
    ("--max-new-tokens", "max_new_tokens", int, "response length limit of each rollout"),
    ("--temperature", "temperature", float, "sampling temperature; also divides the logits of every log-prob"),
    ("--kl-coef", "kl_coef", float, "beta: per-token penalty beta (log pi - log pi_ref) keeping the policy near "
     "the start model (with --target-kl: its start value)"),
    ("--target-kl", "target_kl", float, "adapt beta towards this mean KL per response: beta <- beta (1 + "
     "clip(KL/target - 1, +-0.2) n/horizon) (default: fixed beta)"),
    ("--kl-horizon", "kl_horizon", int, "adaptive beta: rollouts over which a KL error is corrected"),
    ("--ppo-epochs", "ppo_epochs", int, "passes over each batch of rollouts"),
    ("--mini-batches", "mini_batches", int, "optimizer steps per pass (the rollouts are split this many ways)"),
    ("--cliprange", "cliprange", float, "PPO ratio clip epsilon"),
    ("--cliprange-value", "cliprange_value", float, "value clip: new values stay within this of the old"),
    ("--vf-coef", "vf_coef", float, "weight of the value loss"),
    ("--gamma", "gamma", float, "discount"),
    ("--lam", "lam", float, "GAE lambda"),
    ("--value-model", "value_model", str, "shared: a value head on the policy's body; separate: its own network, "
     "a copy of --reward-model (InstructGPT, TRL; twice the memory and compute in the updates) or of --model "
     "with a new head under --reward-fn"),
    ("--missing-eos-penalty", "missing_eos_penalty", float, "subtracted from the score of a response that "
     "reaches --max-new-tokens without EOS (default: none)"),
    ("--ptx-data", "ptx_data", str, "PPO-ptx: a raw-text corpus (file, directory or glob, tokenized once and "
     "cached like minigpt-pretrain's) whose language-modelling loss joins every update (default: none)"),
    ("--ptx-coef", "ptx_coef", float, "PPO-ptx: gamma, the weight of the mean next-token cross entropy on "
     "--ptx-data (InstructGPT: 27.8)"),
    ("--ptx-batch-size", "ptx_batch_size", int, "PPO-ptx: windows per update, over all processes (default: the "
     "rollouts per mini-batch)"),
    ("--ptx-block-size", "ptx_block_size", int, "PPO-ptx: tokens per window"),
]
# what the shared flags mean when a step is one PPO iteration
STEP_HELP = {
    "eval_fraction": "share of --prompts held out for evaluation (mean score of sampled responses)",
    "epochs": "passes over the prompts",
    "max_steps": "PPO steps (a batch of rollouts, then its updates); overrides --epochs",
    "batch_size": "rollouts (prompts) per PPO step, over all processes",
    "micro_batch_size": "rollouts per forward pass per process (default: the whole per-process batch)",
    "warmup_steps": "linear warmup steps",
    "eval_every": "evaluate every N PPO steps (default: 10 times per run)",
}
PPO_FIELDS = ("reward_model", "reward_fn", "whiten_rewards") + tuple(name for _, name, _, _ in PPO_FLAGS)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="minigpt-ppo",
        description="PPO (InstructGPT step 3): sample responses to prompts, score them with a reward model or a "
        "Python function, and improve the policy with PPO while a per-token KL penalty keeps it near the start "
        "model. Each step: --batch-size rollouts, then --ppo-epochs x --mini-batches optimizer steps. Writes an "
        "ordinary LM checkpoint (hub layout + prompt template; the value head beside it in "
        "value_head.safetensors, or a separate value network in value_model/) and train_log.jsonl (one line per "
        "step).",
        epilog="prompts: JSONL, {\"prompt\": ...} per line; SFT and preference files work too (their prompts are "
        "used), rendered with the start checkpoint's prompt template.\n"
        "reward function: FILE.py:FUNCTION, called as FUNCTION(prompts: list[str], responses: list[str]) -> "
        "list[float]; an exception or a non-finite value stops the run with one error line.\n"
        "progress: score = mean reward of the step's rollouts, kl = mean sum over response tokens of "
        "log pi - log pi_ref, beta = the KL coefficient; eval = mean score on held-out prompts.\n"
        "examples:\n"
        "  minigpt-ppo --model runs/sft --prompts prompts.jsonl --reward-model runs/rm --out runs/ppo\n"
        "  minigpt-ppo --model runs/sft --prompts prompts.jsonl --reward-fn rewards.py:brevity --out runs/ppo "
        "--kl-coef 0.02\n"
        "  minigpt-ppo --out runs/ppo --resume            # after Ctrl-C: continue exactly",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_training_arguments(parser, PPOConfig, data_help="JSONL file of prompts", data_flag="--prompts",
                           fields=("prompt",),
                           help_overrides=STEP_HELP)
    ppo = parser.add_argument_group("PPO")
    reward = ppo.add_mutually_exclusive_group()
    reward.add_argument("--reward-model", help="a reward model checkpoint (minigpt-reward's output)")
    reward.add_argument("--reward-fn", help="FILE.py:FUNCTION, a Python reward (prompts, responses) -> floats")
    for flag, name, kind, text in PPO_FLAGS:
        default = PPOConfig.__dataclass_fields__[name].default
        choices = {"choices": VALUE_MODELS} if name == "value_model" else {}
        ppo.add_argument(flag, dest=name, type=kind, **choices,
                         help=text if "(default" in text else f"{text} (default: {default})")
    ppo.add_argument("--whiten-rewards", action="store_true", default=None,
                     help="whiten the per-token rewards of each batch (variance 1, mean kept)")
    return parser


def run(args: argparse.Namespace) -> int:
    return run_trainer(args, train_ppo, PPOConfig, "minigpt-ppo", extra_fields=PPO_FIELDS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
