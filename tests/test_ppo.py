"""PPO (InstructGPT step 3): each implementation detail on its own, then learning, the KL leash, exact resume,
the reward model path, and bad rewards from the CLI."""

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT, run_script, write_jsonl

from minigpt import GPT, RewardModel
from minigpt.config import GPTConfig
from minigpt.train.data import DataError, PromptTemplate
from minigpt.train import STATE_FILE, PPOConfig, TrainingError, train_ppo
from minigpt.train.ppo import (PPO, VALUE_HEAD_FILE, VALUE_HEAD_KEY, VALUE_MODEL_DIR, PolicyWithValue, PPOLoss,
                               critic_values, new_value_head)
from minigpt.train.prompts import load_prompts
from minigpt.train.rl import adaptive_kl_coef, gae, kl_penalty_rewards, policy_loss, value_loss, whiten
from minigpt.train.rollout import response_outputs, sample_responses
from minigpt.train.run import LOG_FILE


PPO_SCRIPT = str(REPO_ROOT / "scripts" / "ppo.py")
WORDS = "apple river stone cloud music garden paper light window forest ocean bread silver tiger candle".split()


def ragged_mask(lengths, width):
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()


def tiny_policy(seed=0, vocab=24):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=vocab, eos_token_id=3)).eval()


# --------------------------------------------------------------------------- the arithmetic, one detail each


def test_gae_equals_a_naive_backwards_loop():
    torch.manual_seed(0)
    lengths = [5, 1, 3, 5]
    mask = ragged_mask(lengths, 5)
    rewards, values = torch.randn(4, 5) * mask, torch.randn(4, 5)
    for gamma, lam in [(1.0, 0.95), (0.9, 0.5)]:
        advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
        for row, n in enumerate(lengths):
            running = 0.0
            for t in reversed(range(n)):
                next_value = values[row, t + 1].item() if t + 1 < n else 0.0  # nothing after the last token
                delta = rewards[row, t].item() + gamma * next_value - values[row, t].item()
                running = delta + gamma * lam * running
                assert advantages[row, t].item() == pytest.approx(running, abs=1e-5)
                assert returns[row, t].item() == pytest.approx(running + values[row, t].item(), abs=1e-5)
            assert torch.all(advantages[row, n:] == 0) and torch.all(returns[row, n:] == 0)  # padding gets nothing


def test_whitening_uses_the_population_variance_of_real_tokens_only():
    torch.manual_seed(0)
    mask = ragged_mask([4, 2, 3], 4)
    values = torch.randn(3, 4) * 3 + 2
    values[mask == 0] = 1000.0  # padding must not count
    real = values[mask.bool()]
    out = whiten(values, mask)
    expected = (real - real.mean()) / real.var(unbiased=False).sqrt()
    assert torch.allclose(out[mask.bool()], expected, atol=1e-5)
    assert torch.all(out[mask == 0] == 0)
    kept = whiten(values, mask, shift_mean=False)  # rewards: scaled, the mean kept
    assert torch.allclose(kept[mask.bool()], expected + real.mean(), atol=1e-5)
    assert not torch.allclose(out[mask.bool()], (real - real.mean()) / real.var(unbiased=True).sqrt(), atol=1e-3)
    negative = -values.abs() * mask - 1  # a negative sum (advantages often have one) is centred too
    real = negative[mask.bool()]
    assert torch.allclose(whiten(negative, mask)[mask.bool()], (real - real.mean()) / real.var(unbiased=False).sqrt(),
                          atol=1e-5)


def test_whitening_is_exact_when_the_mean_dwarfs_the_spread():
    """E[x^2] - mean^2 in fp32 loses everything at mean 1e4 (the scale came out ~1e4); two passes do not."""
    torch.manual_seed(1)
    mask = ragged_mask([16, 9, 12], 16)
    for offset in (3e3, 1e4, 1e6):
        values = (torch.randn(3, 16, dtype=torch.float64) + offset).float()
        real = values[mask.bool()].double()
        out = whiten(values, mask)[mask.bool()].double()
        assert out.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)
        assert torch.allclose(out, (real - real.mean()) / real.std(unbiased=False), atol=2e-3)


def test_score_lands_on_the_last_real_token_and_kl_is_per_token():
    mask = ragged_mask([3, 1, 4], 4)
    logprobs, ref = torch.randn(3, 4) * mask, torch.randn(3, 4) * mask
    scores = torch.tensor([10.0, 20.0, 30.0])
    rewards, kl = kl_penalty_rewards(scores, logprobs, ref, mask, beta=0.1)
    assert torch.allclose(kl, (logprobs - ref) * mask)
    expected = -0.1 * kl
    expected[0, 2] += 10.0
    expected[1, 0] += 20.0
    expected[2, 3] += 30.0
    assert torch.allclose(rewards, expected)
    assert torch.all(rewards[mask == 0] == 0)


def test_adaptive_kl_coefficient_formula():
    # KL/target - 1 clipped to [-0.2, 0.2], scaled by n / horizon
    assert adaptive_kl_coef(0.1, kl=12.0, target=6.0, n=512, horizon=10000) == pytest.approx(0.1 * (1 + 0.2 * 0.0512))
    assert adaptive_kl_coef(0.1, kl=0.0, target=6.0, n=512, horizon=10000) == pytest.approx(0.1 * (1 - 0.2 * 0.0512))
    assert adaptive_kl_coef(0.1, kl=6.6, target=6.0, n=100, horizon=1000) == pytest.approx(0.1 * (1 + 0.1 * 0.1))
    assert adaptive_kl_coef(0.1, kl=6.0, target=6.0, n=100, horizon=1000) == pytest.approx(0.1)


def test_clipped_policy_and_value_losses():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]]))  # ratios
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, clipped = policy_loss(new, old, advantages, cliprange=0.2)
    # -min(r A, clip(r) A): A > 0 caps the gain at 1.2; A < 0 caps the relief at 0.8
    assert torch.allclose(loss, torch.tensor([[-1.2, -0.5, 1.5, 0.8]]))
    assert clipped.tolist() == [[True, False, False, True]]
    values, old_values, returns = torch.tensor([[1.0, 0.05]]), torch.zeros(1, 2), torch.tensor([[0.0, 1.0]])
    vloss, vclipped = value_loss(values, old_values, returns, cliprange_value=0.2)
    # first: clip(1.0) = 0.2 -> max(1, 0.04) = 1; second: max(0.9025, 0.64)
    assert torch.allclose(vloss, 0.5 * torch.tensor([[1.0, 0.95 ** 2]]))
    assert vclipped.tolist() == [[False, False]]
    vloss, vclipped = value_loss(torch.tensor([[-0.5]]), torch.zeros(1, 1), torch.tensor([[1.0]]), 0.2)
    assert torch.allclose(vloss, torch.tensor([[0.5 * 2.25]])) and not vclipped.item()


# --------------------------------------------------------------------------- rollouts


def test_logprobs_gathered_while_sampling_equal_a_full_forward_pass():
    policy = tiny_policy()
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], [4, 16, 17, 18, 19]]  # ragged: left-padded
    gen = torch.Generator().manual_seed(1)
    batch = sample_responses(policy, prompts, max_new_tokens=12, temperature=0.7, eos_id=3, generator=gen)
    ids, mask = batch.response_ids, batch.response_mask
    # cut at EOS: the EOS is the last real token; everything after is padding
    for row in range(len(prompts)):
        tokens = ids[row].tolist()
        n = int(mask[row].sum())
        if 3 in tokens[:n]:
            assert tokens.index(3) == n - 1 and batch.ended[row]
        else:
            assert n == 12 and not batch.ended[row]
        assert mask[row, :n].eq(1).all() and mask[row, n:].eq(0).all()
    assert batch.ended.any() and mask.sum() > len(prompts)  # the test exercises both kinds of row
    full = response_outputs(policy, batch.query_ids, batch.query_mask, ids, mask, temperature=0.7)
    assert torch.allclose(full.logprobs, batch.logprobs, atol=1e-5)
    assert torch.all(batch.logprobs[mask == 0] == 0)
    # temperature matters: the log-probs at T = 1 differ
    assert not torch.allclose(response_outputs(policy, batch.query_ids, batch.query_mask, ids, mask,
                                               temperature=1.0).logprobs, batch.logprobs, atol=1e-3)


def test_policy_equal_to_reference_gives_zero_kl_and_ratio_one():
    policy = tiny_policy()
    reference = tiny_policy()  # the same weights
    model = PolicyWithValue(policy, new_value_head(32, seed=0))
    config = PPOConfig(data="", out="", reward_fn="x.py:f", temperature=0.7)
    batch = sample_responses(policy, [[5, 6], [7, 8, 9, 10], [11, 12, 13]], max_new_tokens=8, temperature=0.7,
                             eos_id=3, generator=torch.Generator().manual_seed(0))
    fields = (batch.query_ids, batch.query_mask, batch.response_ids, batch.response_mask)
    ref = response_outputs(reference, *fields, temperature=0.7).logprobs
    rewards, kl = kl_penalty_rewards(torch.zeros(3), batch.logprobs, ref, batch.response_mask, beta=0.5)
    assert kl.abs().max() < 1e-5
    batch.values = response_outputs(policy, *fields, temperature=0.7, value_head=model.value_head).values
    torch.manual_seed(0)
    advantages = whiten(torch.randn(batch.logprobs.shape), batch.response_mask)
    batch.advantages, batch.returns = advantages, batch.values + 1.0
    loss, stats = PPOLoss(model, config)(**batch.training_fields())
    pg, vf, clipfrac, vclipfrac, approx_kl, entropy, ptx = stats.tolist()
    n = batch.response_mask.sum().item()
    assert clipfrac == 0 and approx_kl / n < 1e-10 and ptx == 0
    assert pg / n == pytest.approx(-(advantages * batch.response_mask).sum().item() / n, abs=1e-5)  # ratio == 1
    assert vf / n == pytest.approx(0.5, abs=1e-5) and vclipfrac == 0  # values == old values, returns 1 above
    assert 0 < entropy / n <= math.log(24) + 1e-4


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_values_come_from_the_value_network_and_only_a_shared_one_pulls_on_the_policy(value_model):
    """A separate value network (a reward model's copy) gives, at each response position, the reward model's score
    of the sequence up to there; its value loss leaves the policy's gradients at zero. A shared head's does not."""
    policy = tiny_policy()
    torch.manual_seed(5)
    critic = RewardModel.from_lm(tiny_policy(seed=7), seed=2) if value_model == "separate" else None
    model = PolicyWithValue(policy, new_value_head(32, seed=1) if critic is None else None, critic=critic)
    batch = sample_responses(policy, [[5, 6, 7], [8, 9]], max_new_tokens=5, temperature=1.0, eos_id=3,
                             generator=torch.Generator().manual_seed(0))
    fields = (batch.query_ids, batch.query_mask, batch.response_ids, batch.response_mask)
    with torch.no_grad():
        values = critic_values(model, fields, temperature=1.0)  # [2, 5]
    if critic is not None:
        row = torch.cat([torch.tensor([5, 6, 7]), batch.response_ids[0]])  # the first row (not left-padded)
        real = int(batch.response_mask[0].sum())
        assert real >= 2
        for t in range(real):  # the value of response token t reads the state just before it
            assert values[0, t].item() == pytest.approx(critic(row[None, : 3 + t]).item(), abs=1e-5)
    batch.values, batch.returns = values, values + 1.0
    batch.advantages = torch.zeros_like(values)  # no policy-gradient term: only the value loss trains
    config = PPOConfig(data="", out="", reward_fn="x.py:f", temperature=1.0)
    loss, _ = PPOLoss(model, config)(**batch.training_fields())
    loss.backward()
    policy_grad = sum(float(p.grad.abs().sum()) for p in policy.parameters() if p.grad is not None)
    head_grad = model.value_network()[1].weight.grad
    assert head_grad is not None and head_grad.abs().sum() > 0
    assert (policy_grad == 0) == (value_model == "separate"), policy_grad


class StubTokenizer:
    eos_token_id = 3

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_missing_eos_penalty_applies_only_to_responses_without_eos():
    config = PPOConfig(data="", out="", reward_fn="x.py:f", max_new_tokens=6, temperature=1.0,
                       missing_eos_penalty=2.5)
    objective = PPO(config)
    objective.reference, objective.tokenizer = tiny_policy(), StubTokenizer()
    seen = []
    objective.scorer = lambda prompts, texts: (seen.extend(texts), torch.ones(len(texts)))[1]
    model = PolicyWithValue(tiny_policy(), new_value_head(32))
    prompts = [type("P", (), {"ids": (5, 6, 7)})() for _ in range(16)]
    batch, scores, _ = objective.rollouts(model, prompts, generator=torch.Generator().manual_seed(0), micro=8)
    assert batch.ended.any() and not batch.ended.all()
    assert torch.equal(scores, torch.where(batch.ended, 1.0, 1.0 - 2.5))
    for text, ended in zip(seen, batch.ended):  # the scorer sees the response without its EOS
        assert "3" not in text.split()


# --------------------------------------------------------------------------- prompts


def test_prompt_files_of_every_shape_and_bad_lines(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Name a fruit."},
        {"prompt": "Say hi", "response": "hi"},  # SFT
        {"instruction": "Translate", "input": "chat", "output": "cat"},  # Alpaca
        {"prompt": "Pick", "chosen": "a", "rejected": "b"},  # preference
        {"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\nAssistant: no"},  # HH
    ])
    template = PromptTemplate()
    prompts, report = load_prompts(str(path), tokenizer, template, 200)
    assert [p.text for p in prompts] == ["Name a fruit.", "Say hi", "Translate\n\nchat", "Pick",
                                         "\n\nHuman: hi\n\nAssistant:"]
    assert list(prompts[2].ids) == tokenizer.encode(template.render("Translate", "chat"))
    short, report = load_prompts(str(path), tokenizer, template, len(prompts[0].ids))
    assert report.dropped and all(len(p.ids) <= len(prompts[0].ids) for p in short)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}], raw_lines={2: "{oops", 3: '{"prompt": 3}'})
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON.*bad\.jsonl:3: field 'prompt' must be"):
        load_prompts(str(bad), tokenizer, template, 200)


# --------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def task(text_model_dir, tmp_path_factory):
    """Prompts and a reward the tiny model can learn: the share of response tokens in S = {v : wte[v] . u > 0}."""
    root = tmp_path_factory.mktemp("ppo")
    wte = GPT.from_pretrained(text_model_dir).wte.weight.detach()
    u = torch.randn(wte.shape[1], generator=torch.Generator().manual_seed(1))
    (root / "S.json").write_text(json.dumps((wte @ u > 0).nonzero().squeeze(-1).tolist()))
    (root / "reward.py").write_text(
        "import json\nfrom minigpt import Tokenizer\n"
        f"TOKENIZER = Tokenizer.from_pretrained({str(text_model_dir)!r})\n"
        f"S = set(json.load(open({str(root / 'S.json')!r})))\n\n"
        "def share_in_s(prompts, responses):\n"
        "    ids = [TOKENIZER.encode(r) for r in responses]\n"
        "    return [sum(i in S for i in row) / len(row) if row else 0.0 for row in ids]\n\n"
        "def boom(prompts, responses):\n    raise RuntimeError('the judge is out')\n\n"
        "def nan(prompts, responses):\n    return [float('nan')] * len(responses)\n")
    import random

    rng = random.Random(0)

    def prompts(n):
        return [{"prompt": f"Say something about the {' and the '.join(rng.sample(WORDS, 2))}."} for _ in range(n)]

    return {"root": root, "train": write_jsonl(root / "train.jsonl", prompts(32)),
            "eval": write_jsonl(root / "eval.jsonl", prompts(24)), "reward": f"{root / 'reward.py'}:share_in_s",
            "model": str(text_model_dir)}


def ppo_config(task, out, **overrides):
    settings = dict(data=str(task["train"]), eval_data=str(task["eval"]), out=str(out), model=task["model"],
                    reward_fn=task["reward"], batch_size=16, max_new_tokens=8, temperature=1.0, lr=3e-3,
                    kl_coef=0.05, seed=0)
    settings.update(overrides)
    return PPOConfig(**settings)


@pytest.mark.slow
def test_ppo_raises_the_reward_on_held_out_prompts_with_bounded_kl(task, tmp_path):
    result = train_ppo(ppo_config(task, tmp_path / "run", max_steps=16, eval_every=16), progress=False)
    (_, before), (_, after) = result.eval_metrics[0], result.eval_metrics[-1]
    assert before["kl"] == pytest.approx(0, abs=1e-4)
    assert after["score"] > before["score"] + 0.1, (before, after)
    assert 0 < after["kl_per_token"] < 1.0
    log = [json.loads(line) for line in (tmp_path / "run" / LOG_FILE).read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 17))
    for key in ("score", "kl", "entropy", "clipfrac", "approx_kl", "value_loss", "kl_coef", "tokens_per_second"):
        assert all(math.isfinite(e[key]) for e in log), key
    # the output is an ordinary LM checkpoint; the value head lies beside it
    policy = GPT.from_pretrained(tmp_path / "run")
    assert not torch.equal(policy.wte.weight, GPT.from_pretrained(task["model"]).wte.weight)
    assert load_file(str(tmp_path / "run" / VALUE_HEAD_FILE))[VALUE_HEAD_KEY].shape == (1, 64)


@pytest.mark.slow
def test_the_kl_penalty_keeps_the_policy_closer_to_the_start(task, tmp_path):
    kls = {}
    for beta in (0.0, 3.0):
        # advantages are whitened, so every update moves the policy about as far whatever beta is; beta only
        # steers where. A moderate lr lets the penalty show within a few steps.
        result = train_ppo(ppo_config(task, tmp_path / f"b{beta}", max_steps=8, eval_every=8, kl_coef=beta, lr=1e-3),
                           progress=False)
        kls[beta] = result.eval_metrics[-1][1]["kl"]
    assert kls[0.0] > 1.5 * kls[3.0] and kls[0.0] > 0.5, kls


@pytest.mark.slow
@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_interrupted_and_resumed_equals_uninterrupted(task, tmp_path, value_model):
    settings = dict(max_steps=4, batch_size=8, eval_every=2, ppo_epochs=2, mini_batches=2, target_kl=1.0,
                    kl_horizon=100, value_model=value_model)
    full = train_ppo(ppo_config(task, tmp_path / "full", **settings), progress=False)
    cut = train_ppo(ppo_config(task, tmp_path / "cut", **settings), progress=False, should_stop=lambda s: s == 2)
    assert cut.interrupted and cut.step == 2
    resumed = train_ppo(ppo_config(task, tmp_path / "cut", **settings), resume=True, progress=False)
    assert resumed.step == 4 and resumed.train_losses == full.train_losses[2:]
    value_file = VALUE_HEAD_FILE if value_model == "shared" else f"{VALUE_MODEL_DIR}/model.safetensors"
    assert not (tmp_path / "full" / (VALUE_MODEL_DIR if value_model == "shared" else VALUE_HEAD_FILE)).exists()
    for name in ("model.safetensors", value_file):
        a, b = load_file(str(tmp_path / "full" / name)), load_file(str(tmp_path / "cut" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    drop_time = lambda path: [{k: v for k, v in json.loads(line).items()  # noqa: E731
                               if k not in ("seconds", "tokens_per_second")}
                              for line in path.read_text().splitlines()]
    full_log, cut_log = drop_time(tmp_path / "full" / LOG_FILE), drop_time(tmp_path / "cut" / LOG_FILE)
    assert full_log == cut_log
    assert len({e["kl_coef"] for e in full_log}) > 1  # the adaptive beta moved, and was restored exactly
    state = json.loads((tmp_path / "cut" / STATE_FILE).read_text())
    assert state["objective"] == "ppo" and state["eval_metrics"] == json.loads(
        (tmp_path / "full" / STATE_FILE).read_text())["eval_metrics"]


@pytest.mark.slow
def test_reward_model_scores_and_value_head_start(task, tokenizer, tmp_path):
    rm = RewardModel.from_lm(GPT.from_pretrained(task["model"]), seed=3)
    rm.save_pretrained(tmp_path / "rm", tokenizer=tokenizer, template=PromptTemplate())
    config = ppo_config(task, tmp_path / "run", reward_fn=None, reward_model=str(tmp_path / "rm"), max_steps=1,
                        batch_size=4, lr=1e-6, eval_every=1)
    from minigpt.train.scorers import RewardModelScorer

    scorer = RewardModelScorer(str(tmp_path / "rm"), torch.device("cpu"), batch_size=2)
    prompts, _ = load_prompts(str(task["eval"]), tokenizer, PromptTemplate(), 200)
    responses = ["the river is silver", "candle light"]
    ids = [tokenizer.encode(PromptTemplate().render(p.instruction)) + tokenizer.encode(r) + [tokenizer.eos_token_id]
           for p, r in zip(prompts, responses)]
    expected = [rm(torch.tensor([row])).item() for row in ids]  # rendered as in reward-model training
    assert torch.allclose(scorer(prompts[:2], responses), torch.tensor(expected), atol=1e-5)
    train_ppo(config, progress=False)
    head = load_file(str(tmp_path / "run" / VALUE_HEAD_FILE))[VALUE_HEAD_KEY]
    assert torch.allclose(head, rm.score.weight, atol=1e-4)  # initialised from the reward model's head
    # a separate value network starts as a copy of the whole reward model and is saved as one
    separate = dataclasses.replace(config, out=str(tmp_path / "separate"), value_model="separate")
    train_ppo(separate, progress=False)
    critic = RewardModel.from_pretrained(tmp_path / "separate" / VALUE_MODEL_DIR)
    assert not (tmp_path / "separate" / VALUE_HEAD_FILE).exists()
    for (name, a), b in zip(rm.state_dict().items(), critic.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-4), name  # one step at lr 1e-6 from the reward model's weights


@pytest.mark.slow
def test_cli_trains_exports_to_transformers_and_refuses_bad_rewards(task, tmp_path):
    from transformers import GPT2LMHeadModel

    common = ["--model", task["model"], "--prompts", str(task["train"]), "--batch-size", "4", "--max-steps", "2",
              "--max-new-tokens", "4", "--lr", "1e-3", "--quiet"]
    done = run_script(PPO_SCRIPT, *common, "--reward-fn", task["reward"], "--out", str(tmp_path / "ok"))
    assert done.returncode == 0, done.stderr
    ours = GPT.from_pretrained(tmp_path / "ok")
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "ok").eval()
    ids = torch.tensor([[464, 3290, 373, 1043]])
    with torch.no_grad():
        assert torch.allclose(ours(ids), theirs(ids).logits, atol=1e-4)
    for name, message in [("boom", "raised RuntimeError: the judge is out"), ("nan", "returned nan for response 0")]:
        out = tmp_path / name
        bad = run_script(PPO_SCRIPT, *common, "--reward-fn", f"{task['root'] / 'reward.py'}:{name}", "--out", str(out))
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr and not out.exists()


def test_bad_settings_are_refused(task, tmp_path):
    with pytest.raises(TrainingError, match="exactly one of"):
        train_ppo(ppo_config(task, tmp_path / "x", reward_fn=None), progress=False)
    with pytest.raises(TrainingError, match="temperature must be > 0"):
        train_ppo(ppo_config(task, tmp_path / "x", temperature=0.0), progress=False)
    with pytest.raises(TrainingError, match="do not split into 4 equal mini-batches"):
        train_ppo(ppo_config(task, tmp_path / "x", batch_size=6, mini_batches=4), progress=False)
    with pytest.raises(TrainingError, match="not a multiple of micro_batch_size 4"):
        train_ppo(ppo_config(task, tmp_path / "x", batch_size=12, mini_batches=2, micro_batch_size=4),
                  progress=False)
    with pytest.raises(TrainingError, match="reward function file not found"):
        train_ppo(ppo_config(task, tmp_path / "x", reward_fn=str(tmp_path / "none.py") + ":f"), progress=False)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- PPO-ptx


def test_ptx_term_is_the_weighted_summed_cross_entropy():
    import torch.nn.functional as F

    policy = tiny_policy()
    model = PolicyWithValue(policy, new_value_head(32))
    config = PPOConfig(data="", out="", reward_fn="x.py:f", temperature=0.7)
    batch = sample_responses(policy, [[5, 6], [7, 8, 9]], max_new_tokens=5, temperature=0.7, eos_id=3,
                             generator=torch.Generator().manual_seed(0))
    fields = (batch.query_ids, batch.query_mask, batch.response_ids, batch.response_mask)
    batch.values = response_outputs(policy, *fields, temperature=0.7, value_head=model.value_head).values
    batch.advantages, batch.returns = torch.randn(batch.logprobs.shape), torch.randn(batch.logprobs.shape)
    windows = torch.randint(0, 24, (3, 9), generator=torch.Generator().manual_seed(1))
    loss_fn = PPOLoss(model, config)
    plain, _ = loss_fn(**batch.training_fields())
    mixed, stats = loss_fn(**batch.training_fields(), ptx_input_ids=windows[:, :-1], ptx_targets=windows[:, 1:],
                           ptx_weight=0.25)
    ce_sum = F.cross_entropy(policy(windows[:, :-1]).flatten(0, 1), windows[:, 1:].flatten(), reduction="sum")
    assert mixed.item() == pytest.approx(plain.item() + 0.25 * ce_sum.item(), rel=1e-5)
    assert stats[-1].item() == pytest.approx(ce_sum.item(), rel=1e-5)


@pytest.mark.slow
def test_ptx_keeps_the_policy_good_at_its_pretraining_text(task, tokenizer, tmp_path):
    from minigpt.train.corpus import TokenWindows, load_token_file
    from minigpt.train.lm import collate_windows
    from minigpt.train.sft import ResponseLoss

    text = tmp_path / "pretrain.txt"
    text.write_text("\n".join(", ".join(str(i) for i in range(1, n)) + "." for n in range(5, 40)), encoding="utf-8")
    token_file = load_token_file(str(text), tokenizer, cache_dir=str(tmp_path / "cache"), progress=False)
    windows = TokenWindows(token_file.tokens(), 32)

    def cross_entropy(directory):
        batch = collate_windows([windows[i] for i in range(len(windows))])
        with torch.no_grad():
            loss = ResponseLoss(GPT.from_pretrained(directory))(batch.input_ids, batch.targets)
        return loss.item() / batch.targets.numel()

    runs = {}
    for coef in (0.0, 1.0):
        ptx = dict(ptx_data=str(text), ptx_coef=coef, ptx_block_size=32) if coef else {}
        train_ppo(ppo_config(task, tmp_path / f"ptx{coef}", max_steps=4, eval_every=4, batch_size=8, lr=3e-3, **ptx),
                  progress=False)
        runs[coef] = cross_entropy(tmp_path / f"ptx{coef}")
    start = cross_entropy(task["model"])
    assert runs[1.0] < start - 1.0 and runs[1.0] < runs[0.0] - 1.0, (start, runs)
    log = [json.loads(line) for line in (tmp_path / "ptx1.0" / LOG_FILE).read_text().splitlines()]
    assert log[-1]["ptx_loss"] < log[0]["ptx_loss"]
    assert "ptx_loss" not in json.loads((tmp_path / "ptx0.0" / LOG_FILE).read_text().splitlines()[0])
