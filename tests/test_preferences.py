"""Preference data, the reward model and DPO: formulas, export to transformers, learning, resume, bad input."""

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT, run_script, synthetic_instructions, synthetic_preferences, write_jsonl

from minigpt import GPT, RewardModel
from minigpt.train.data import DataError, PromptTemplate
from minigpt.train import STATE_FILE, DPOConfig, RewardConfig, train_dpo, train_reward_model
from minigpt.train.dpo import DPOLoss, dpo_pair_losses, sequence_logps
from minigpt.train.preferences import collate_preferences, load_preferences, parse_preference, split_hh
from minigpt.train.reward import ranking_loss


REWARD = str(REPO_ROOT / "scripts" / "reward.py")
DPO_SCRIPT = str(REPO_ROOT / "scripts" / "dpo.py")


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefs")
    return (write_jsonl(root / "train.jsonl", synthetic_preferences(64, seed=0)),
            write_jsonl(root / "eval.jsonl", synthetic_preferences(32, seed=1)))


@pytest.fixture(scope="module")
def examples(prefs, tokenizer):
    items, _ = load_preferences(str(prefs[1]), tokenizer, PromptTemplate(), 128)
    return items


# --------------------------------------------------------------------------- data


def test_the_three_record_shapes(tokenizer, tmp_path):
    pair = parse_preference({"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.5}, 3)
    assert (pair.prompt, pair.responses, pair.margin, pair.line) == ("p", ("a", "b"), 1.5, 3)
    assert parse_preference({"prompt": "p", "ranked": ["a", "b", "c"]}, 1).responses == ("a", "b", "c")
    hh = parse_preference({"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ciao",
                           "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: no"}, 1)
    assert hh.prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant:"
    assert hh.responses == (" ciao", " no")
    # tokenized as SFT does: template-rendered prompt, then the response + EOS, separately
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hi", "chosen": "hi there", "rejected": "go away"}])
    (example,), _ = load_preferences(str(path), tokenizer, PromptTemplate(), 128)
    prompt = tokenizer.encode(PromptTemplate().render("Say hi"))
    assert example.responses[0].ids == prompt + tokenizer.encode("hi there") + [50256]
    assert example.responses[1].ids == prompt + tokenizer.encode("go away") + [50256]
    assert example.responses[0].prompt_len == len(prompt)


def test_hh_pair_without_a_shared_assistant_turn_is_refused():
    with pytest.raises(ValueError, match="shared prefix"):
        split_hh("Human: a\n\nAssistant: x", "Something else entirely")


def test_bad_lines_are_named_with_file_and_line(tokenizer, tmp_path):
    good = synthetic_preferences(3, ranked_every=0)
    path = write_jsonl(tmp_path / "bad.jsonl", good, raw_lines={
        2: "{not json", 3: json.dumps({"prompt": "p", "ranked": ["only one"]}),
        4: json.dumps({"prompt": "p", "chosen": "a"}), 5: json.dumps({"chosen": "abc", "rejected": "xyz"}),
        6: json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"})})
    with pytest.raises(DataError) as info:
        load_preferences(str(path), tokenizer, PromptTemplate(), 128)
    message = str(info.value)
    for line in (2, 3, 4, 5, 6):
        assert f"{path}:{line}:" in message
    assert "5 bad record(s)" in message and "'rejected'" in message and "margin" in message


@pytest.mark.slow
def test_bad_preference_file_from_the_cli_trains_and_writes_nothing(text_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", synthetic_preferences(4), raw_lines={3: "[1, 2]"})
    for script in (REWARD, DPO_SCRIPT):
        out = tmp_path / f"out-{os.path.basename(script)}"
        proc = run_script(script, "--model", str(text_model_dir), "--data", str(path), "--out", str(out))
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert f"{path}:3: expected a JSON object" in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}*"))


# --------------------------------------------------------------------------- reward model: loss and export


def test_pairwise_loss_is_the_formula_and_kwise_is_the_mean_of_its_pairs(examples):
    batch = collate_preferences(examples[:6], 50256)  # records 0 and 4 are K=3 rankings, the rest pairs
    rewards = torch.randn(batch.input_ids.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    losses = ranking_loss(rewards, batch)
    row = 0
    for record, example in enumerate(examples[:6]):
        r = rewards[row: row + len(example.responses)].tolist()
        pairs = [-math.log(1 / (1 + math.exp(-(r[i] - r[j] - example.margin))))
                 for i in range(len(r)) for j in range(i + 1, len(r))]
        assert len(pairs) == math.comb(len(r), 2)
        assert losses[record].item() == pytest.approx(sum(pairs) / len(pairs), rel=1e-12)
        row += len(r)
    assert torch.allclose(ranking_loss(rewards + 7.25, batch), losses, rtol=0, atol=1e-12)  # shift invariance


def test_margin_and_center_rewards(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2.0},
                                              {"prompt": "p", "ranked": ["a", "b", "c"]}])
    items, _ = load_preferences(str(path), tokenizer, PromptTemplate(), 64)
    batch = collate_preferences(items, 50256)
    r = torch.tensor([1.0, 0.5, 3.0, 2.0, -1.0], dtype=torch.float64)
    losses = ranking_loss(r, batch, center_rewards=0.1)
    # -log sigmoid(x) = log(1 + exp(-x)); chosen 1.0, rejected 0.5, margin 2
    # TRL's centring: c * (r_chosen + r_rejected)^2 per pair, averaged with the pair losses
    assert losses[0].item() == pytest.approx(math.log1p(math.exp(-(1.0 - 0.5 - 2.0))) + 0.1 * (1.0 + 0.5) ** 2,
                                             rel=1e-9)
    kwise = [math.log1p(math.exp(-d)) for d in (1.0, 4.0, 3.0)]  # 3-2, 3-(-1), 2-(-1)
    centring = [(3 + 2) ** 2, (3 - 1) ** 2, (2 - 1) ** 2]
    assert losses[1].item() == pytest.approx(sum(kwise) / 3 + 0.1 * sum(centring) / 3, rel=1e-9)


def test_center_rewards_never_pushes_on_the_margin(tokenizer, tmp_path):
    """At r = (+1, -1) the pair's mean is 0: the centring term adds no gradient along the margin (the r^2 form
    did: d loss / d margin > 0, shrinking the very margin the ranking loss grows)."""
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    items, _ = load_preferences(str(path), tokenizer, PromptTemplate(), 64)
    batch = collate_preferences(items, 50256)
    r = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    plain = torch.autograd.grad(ranking_loss(r, batch).sum(), r)[0]
    centred = torch.autograd.grad(ranking_loss(r, batch, center_rewards=0.5).sum(), r)[0]
    assert torch.allclose(plain, centred, atol=1e-12)
    shifted = torch.tensor([3.0, 1.0], dtype=torch.float64, requires_grad=True)  # mean 2: pulled down, both alike
    grad = torch.autograd.grad(ranking_loss(shifted, batch, center_rewards=0.5).sum(), shifted)[0]
    grad_plain = torch.autograd.grad(ranking_loss(shifted, batch).sum(), shifted)[0]
    assert torch.allclose(grad - grad_plain, torch.tensor([4.0, 4.0], dtype=torch.float64))


def hf_positions(mask: torch.Tensor) -> torch.Tensor:
    """What a left-padded row needs in transformers: positions that skip the padding."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.fixture(scope="module")
def reward_run(text_model_dir, prefs, tmp_path_factory):
    """A reward model trained on the synthetic preferences from the CLI, normalised on demonstrations."""
    root = tmp_path_factory.mktemp("rm")
    demos = write_jsonl(root / "demos.jsonl", synthetic_instructions(6))
    out = root / "rm"
    proc = run_script(REWARD, "--model", str(text_model_dir), "--data", str(prefs[0]), "--out", str(out),
                      "--max-steps", "24", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "2",
                      "--eval-fraction", "0", "--normalize-on", str(demos), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out, demos


@pytest.mark.slow
def test_reward_model_learns_the_preference_from_the_cli(reward_run, prefs):
    proc = run_script(REWARD, "--model", str(reward_run[0]), "--eval-data", str(prefs[1]), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["accuracy"] >= 0.9 and report["margin"] > 0, report
    assert len(report["records"]) == 32 and report["pairs"] == 24 + 8 * 3


def test_exported_reward_model_equals_transformers_sequence_classifier(reward_run, tokenizer):
    from transformers import GPT2ForSequenceClassification

    out = reward_run[0]
    ours = RewardModel.from_pretrained(out)
    theirs = GPT2ForSequenceClassification.from_pretrained(str(out)).eval()
    assert theirs.config.pad_token_id == 50256 and theirs.config.num_labels == 1
    rows = [tokenizer.encode(t) + [50256] for t in ("a short one", "a somewhat longer response here", "mid length")]
    width = max(map(len, rows))
    alone = torch.stack([ours(torch.tensor([r]))[0] for r in rows])
    right = torch.tensor([r + [50256] * (width - len(r)) for r in rows])
    left = torch.tensor([[50256] * (width - len(r)) + r for r in rows])
    left_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        theirs_right = theirs(right).logits[:, 0]
        theirs_left = theirs(left, attention_mask=left_mask, position_ids=hf_positions(left_mask)).logits[:, 0]
        for got in (ours(right), ours(left, attention_mask=left_mask), theirs_right, theirs_left):
            assert (got - alone).abs().max() <= 1e-4, (got, alone)


def test_normalisation_gives_demonstrations_mean_zero_in_both_libraries(reward_run, tokenizer):
    from transformers import GPT2ForSequenceClassification

    out, demos = reward_run
    info = json.loads((out / "reward_normalization.json").read_text())
    assert abs(info["mean_before"]) > 1e-3  # there was something to remove
    ours = RewardModel.from_pretrained(out)
    theirs = GPT2ForSequenceClassification.from_pretrained(str(out)).eval()
    template = PromptTemplate.load(out)
    rewards_ours, rewards_theirs = [], []
    for record in map(json.loads, demos.read_text().splitlines()):
        ids = torch.tensor([tokenizer.encode(template.render(record["prompt"]))
                            + tokenizer.encode(record["response"]) + [50256]])
        with torch.no_grad():
            rewards_ours.append(ours(ids).item())
            rewards_theirs.append(theirs(ids).logits[0, 0].item())
    assert abs(sum(rewards_ours) / len(rewards_ours)) <= 1e-5
    assert abs(sum(rewards_theirs) / len(rewards_theirs)) <= 1e-5


def _rm_config(text_model_dir, prefs, out, demos, **kw):
    return RewardConfig(data=str(prefs[0]), out=str(out), model=str(text_model_dir), normalize_on=str(demos),
                        max_steps=2, batch_size=4, eval_fraction=0, lr=1e-4, **kw)


def test_bad_demonstrations_fail_before_training_and_write_nothing(text_model_dir, prefs, tmp_path):
    demos = write_jsonl(tmp_path / "demos.jsonl", synthetic_instructions(3), raw_lines={2: "{not json"})
    logged = []
    with pytest.raises(DataError, match="demos.jsonl:2"):
        train_reward_model(_rm_config(text_model_dir, prefs, tmp_path / "rm", demos), progress=False,
                           log=logged.append)
    assert not any(line.startswith("training") for line in logged)
    assert not (tmp_path / "rm").exists()


def test_demonstrations_are_cut_as_training_rows_are(text_model_dir, prefs, tmp_path):
    """A demonstration longer than the context is cut to max_len tokens (not max_len + 1) and normalises."""
    long = {"prompt": "Tell a long story.", "response": " once upon a time" * 200}
    demos = write_jsonl(tmp_path / "demos.jsonl", synthetic_instructions(2) + [long])
    train_reward_model(_rm_config(text_model_dir, prefs, tmp_path / "rm", demos), progress=False)
    info = json.loads((tmp_path / "rm" / "reward_normalization.json").read_text())
    assert info["count"] == 3 and abs(info["mean_after"]) < 1e-4


def test_a_failing_final_stage_keeps_the_trained_model_and_resume_finishes_it(text_model_dir, prefs, tmp_path,
                                                                              monkeypatch):
    import minigpt.train.reward as reward_module

    demos = write_jsonl(tmp_path / "demos.jsonl", synthetic_instructions(3))
    config = _rm_config(text_model_dir, prefs, tmp_path / "rm", demos)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory while normalising")

    with monkeypatch.context() as patch:
        patch.setattr(reward_module, "normalize_rewards_", broken)
        with pytest.raises(RuntimeError, match="out of memory"):
            train_reward_model(config, progress=False)
    state = json.loads((tmp_path / "rm" / STATE_FILE).read_text())
    assert state["step"] == 2 and state["finished"] is False
    assert not (tmp_path / "rm" / "reward_normalization.json").exists()
    train_reward_model(config, resume=True, progress=False)
    assert json.loads((tmp_path / "rm" / STATE_FILE).read_text())["finished"] is True
    assert (tmp_path / "rm" / "reward_normalization.json").is_file()


def test_resuming_a_finished_normalised_run_keeps_its_normalisation(text_model_dir, prefs, tmp_path):
    demos = write_jsonl(tmp_path / "demos.jsonl", synthetic_instructions(3))
    config = _rm_config(text_model_dir, prefs, tmp_path / "rm", demos)
    train_reward_model(config, progress=False)
    before = (tmp_path / "rm" / "reward_normalization.json").read_text()
    rewards = RewardModel.from_pretrained(tmp_path / "rm").score.weight.clone()
    train_reward_model(config, resume=True, progress=False)
    assert (tmp_path / "rm" / "reward_normalization.json").read_text() == before
    assert torch.equal(RewardModel.from_pretrained(tmp_path / "rm").score.weight, rewards)


def test_an_lm_checkpoint_is_not_a_reward_model_and_vice_versa(reward_run, text_model_dir):
    from minigpt import CheckpointError

    with pytest.raises(CheckpointError, match="not a reward model"):
        RewardModel.from_pretrained(text_model_dir)
    with pytest.raises(CheckpointError, match="RewardModel.from_pretrained"):
        GPT.from_pretrained(str(reward_run[0]))


# --------------------------------------------------------------------------- DPO: formulas


def test_dpo_loss_is_log2_when_policy_is_reference(text_model_dir, examples):
    model = GPT.from_pretrained(str(text_model_dir))
    batch = collate_preferences(examples[:5], 50256)
    for loss in ("sigmoid", "ipo"):
        config = DPOConfig(data="", out="", beta=0.1, loss=loss)
        with torch.no_grad():
            value = DPOLoss(model, model, config)(**batch.__dict__) / batch.num_records
        expected = math.log(2) if loss == "sigmoid" else (1 / (2 * 0.1)) ** 2
        assert value.item() == pytest.approx(expected, rel=1e-6)


def test_dpo_pair_losses_are_the_formulas(examples):
    batch = collate_preferences(examples[:6], 50256)
    gen = torch.Generator().manual_seed(3)
    n = batch.input_ids.shape[0]
    policy, reference = -20 * torch.rand(n, generator=gen, dtype=torch.float64), -20 * torch.rand(n, generator=gen, dtype=torch.float64)
    counts = torch.randint(1, 9, (n,), generator=gen)
    for p, (b, w) in enumerate(zip(batch.better.tolist(), batch.worse.tolist())):
        h = (policy[b] - policy[w]) - (reference[b] - reference[w])
        h_ipo = (policy[b] / counts[b] - policy[w] / counts[w]) - (reference[b] / counts[b] - reference[w] / counts[w])
        sigmoid = dpo_pair_losses(policy, reference, counts, batch, beta=0.5)[p]
        smooth = dpo_pair_losses(policy, reference, counts, batch, beta=0.5, label_smoothing=0.2)[p]
        ipo = dpo_pair_losses(policy, reference, counts, batch, beta=0.5, loss="ipo")[p]
        assert sigmoid.item() == pytest.approx(math.log1p(math.exp(-0.5 * h.item())), rel=1e-9)
        assert smooth.item() == pytest.approx(0.8 * math.log1p(math.exp(-0.5 * h.item()))
                                              + 0.2 * math.log1p(math.exp(0.5 * h.item())), rel=1e-9)
        assert ipo.item() == pytest.approx((h_ipo.item() - 1.0) ** 2, rel=1e-9)


def test_sequence_logps_of_a_padded_pair_equal_the_pair_alone(text_model_dir, examples):
    model = GPT.from_pretrained(str(text_model_dir))
    together = collate_preferences(examples[:4], 50256)
    with torch.no_grad():
        logps, counts = sequence_logps(model, together.input_ids, together.targets)
        row = 0
        for example in examples[:4]:
            alone = collate_preferences([example], 50256)
            single, single_counts = sequence_logps(model, alone.input_ids, alone.targets)
            k = len(example.responses)
            assert torch.allclose(logps[row: row + k], single, rtol=1e-5, atol=1e-4)
            assert torch.equal(counts[row: row + k], single_counts)
            # by hand: the sum of log-softmax at the response tokens (+ EOS) of the first response
            ids = torch.tensor([example.responses[0].ids])
            full = model(ids[:, :-1]).log_softmax(-1)[0]
            start = example.responses[0].prompt_len
            by_hand = sum(full[t - 1, ids[0, t]].item() for t in range(start, ids.shape[1]))
            assert single[0].item() == pytest.approx(by_hand, abs=1e-3)
            row += k


def dpo_config(data, out, model, **overrides) -> DPOConfig:
    base = dict(data=str(data), out=str(out), model=str(model), eval_fraction=0.25, batch_size=8,
                micro_batch_size=4, max_steps=6, lr=1e-3, warmup_steps=1, seed=3)
    base.update(overrides)
    return DPOConfig(**base)


@pytest.mark.slow
def test_precomputed_reference_equals_online_reference(text_model_dir, prefs, tmp_path):
    pre = train_dpo(dpo_config(prefs[0], tmp_path / "pre", text_model_dir), progress=False)
    online = train_dpo(dpo_config(prefs[0], tmp_path / "online", text_model_dir, precompute_ref=False),
                       progress=False)
    assert pre.train_losses[0] == pytest.approx(math.log(2), rel=1e-5)
    assert pre.train_losses == pytest.approx(online.train_losses, rel=1e-5, abs=1e-6)
    for (_, a), (_, b) in zip(pre.eval_metrics, online.eval_metrics):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)


# --------------------------------------------------------------------------- end to end, resume


@pytest.mark.slow
def test_dpo_from_the_cli_prefers_held_out_chosen_and_exports_an_lm(text_model_dir, prefs, tmp_path):
    from transformers import GPT2LMHeadModel

    out = tmp_path / "dpo"
    proc = run_script(DPO_SCRIPT, "--model", str(text_model_dir), "--data", str(prefs[0]), "--eval-data",
                      str(prefs[1]), "--out", str(out), "--max-steps", "16", "--batch-size", "8", "--lr", "1e-3",
                      "--warmup-steps", "2", "--beta", "0.1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    state = json.loads((out / STATE_FILE).read_text())
    (first_step, before), (last_step, after) = state["eval_metrics"][0], state["eval_metrics"][-1]
    assert first_step == 0 and last_step == 16
    assert before["loss"] == pytest.approx(math.log(2), rel=1e-6) and before["kl"] == 0
    assert after["accuracy"] >= 0.9 and after["margin"] > 0 and after["loss"] < before["loss"], after
    ours, theirs = GPT.from_pretrained(str(out)), GPT2LMHeadModel.from_pretrained(str(out)).eval()
    ids = torch.randint(0, 50257, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max() <= 1e-5
    assert PromptTemplate.load(out) == PromptTemplate()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["reward", "dpo"])
def test_interrupted_and_resumed_preference_run_is_bit_identical(kind, text_model_dir, prefs, tmp_path):
    if kind == "reward":
        train = train_reward_model

        def make(out):
            return RewardConfig(data=str(prefs[0]), out=str(out), model=str(text_model_dir), eval_fraction=0.25,
                                batch_size=8, micro_batch_size=4, max_steps=6, lr=1e-3, warmup_steps=1, seed=3,
                                center_rewards=0.01)
    else:
        train = train_dpo

        def make(out):
            return dpo_config(prefs[0], out, text_model_dir)
    straight = train(make(tmp_path / "straight"), progress=False)
    stopped = train(make(tmp_path / "split"), progress=False, should_stop=lambda step: step == 2)
    assert stopped.interrupted and stopped.step == 2
    resumed = train(make(tmp_path / "split"), resume=True, progress=False)
    assert resumed.step == 6 and resumed.train_losses == straight.train_losses[2:]
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.eval_metrics == straight.eval_metrics
    with pytest.raises(Exception, match="holds a"):
        (train_dpo if kind == "reward" else train_reward_model)(make(tmp_path / "split"), resume=True,
                                                                 progress=False)
