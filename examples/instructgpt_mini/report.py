"""The run's table (markdown) and curves (PNG): what the paper's Figure 1 and its over-optimisation plots show."""

from __future__ import annotations

import json
from pathlib import Path

from .world import FAMILIES

ORDER = ("pretrained", "SFT", "best-of-", "DPO", "PPO", "PPO-ptx", "PPO beta=0")


def write_report(out: Path, state: dict, results: dict) -> None:
    stages = state["stages"]
    (out / "results.json").write_text(json.dumps({"settings": state["settings"], "stages": stages}, indent=2) + "\n")
    lines = [table(results["models"]), "", reward_model_lines(stages), "", timing_line(stages)]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    curves = {name: stages[name]["result"]["curve"] for name in ("ppo", "ppo_ptx", "ppo_beta0") if name in stages}
    plot(out / "curves.png", curves)


def ordered(models: dict) -> list[str]:
    return sorted(models, key=lambda name: next(i for i, p in enumerate(ORDER) if name.startswith(p)))


def table(models: dict) -> str:
    rows = ["| model | labeler score (held-out) | minus SFT (± paired SE) | win rate vs SFT | reward model | "
            "KL to SFT (nats/response) | " + " | ".join(FAMILIES) + " |", "|---|---|---|---|---|---|" + "---|" * len(FAMILIES)]
    for name in ordered(models):
        m = models[name]
        kl = "-" if m["kl_to_sft"] is None else f"{m['kl_to_sft']:.2f}"
        fam = " | ".join(f"{m['by_family'].get(f, float('nan')):.2f}" for f in FAMILIES)
        diff = f"{m['minus_sft']:+.3f} ± {m['minus_sft_se']:.3f}" if "minus_sft" in m else "-"
        rows.append(f"| {name} | {m['labeler']:.3f} | {diff} | {m['win_vs_sft']:.3f} | {m['reward']:+.2f} | {kl} | "
                    f"{fam} |")
    return "\n".join(rows)


def reward_model_lines(stages: dict) -> str:
    rm = stages["reward_model"]["result"]
    comp = stages["comparisons"]["result"]
    return (f"Reward model, held-out pairs of SFT samples: accuracy {rm['accuracy_clean']:.3f} against the clean "
            f"labeler ({rm['pairs_clean']} pairs), {rm['accuracy_noisy']:.3f} against the noisy one "
            f"({rm['pairs_noisy']} pairs); the noisy labeler itself agrees with the clean one on "
            f"{rm['noisy_labeler_vs_clean']:.3f} of held-out pairs (training comparisons: "
            f"{comp['labeler_agreement']:.3f}; two noisy labelers agree with each other on "
            f"{comp.get('labelers_agree_with_each_other', float('nan')):.3f}; {comp['records']} ranked prompts, "
            f"noise sd {comp['noise']:.3f})."
            + by_family_clause(rm.get("accuracy_clean_by_family", {})))


def by_family_clause(accuracy: dict[str, float]) -> str:
    if not accuracy:
        return ""
    return " By family, against the clean labeler: " + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()) + "."


def timing_line(stages: dict) -> str:
    parts = [f"{name} {stage['seconds'] / 60:.1f}" for name, stage in stages.items()]
    total = sum(stage["seconds"] for stage in stages.values()) / 60
    return f"Minutes per stage: {', '.join(parts)}; total {total:.1f}."


def plot(path: Path, curves: dict[str, list[dict]]) -> None:
    from minigpt.extras import pyplot

    plt = pyplot("plot")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = {"ppo": "PPO", "ppo_ptx": "PPO-ptx", "ppo_beta0": "PPO beta=0"}
    for key, curve in curves.items():
        steps = [p["step"] for p in curve]
        axes[0].plot(steps, [p["labeler"] for p in curve], marker="o", label=names[key])
        axes[1].plot(steps, [p["reward"] for p in curve], marker="o", label=names[key])
        axes[2].plot(steps, [p["kl"] for p in curve], marker="o", label=names[key])
    for ax, title in zip(axes, ("labeler score (held-out, never trained on)", "reward model score", "KL to SFT")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
