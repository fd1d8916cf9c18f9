"""Hook points and caches: every activation equals what transformers' GPT2LMHeadModel computes inside."""

import pytest
import torch
from transformers import GPT2LMHeadModel

import minigpt.model
from minigpt import GPT
from minigpt.hooks import hook_names
from minigpt.inspect import logit_lens


@pytest.fixture(scope="module")
def pair(tiny_dir):
    ours = GPT.from_pretrained(str(tiny_dir))
    theirs = GPT2LMHeadModel.from_pretrained(str(tiny_dir), attn_implementation="eager").eval()
    return ours, theirs


def hf_internals(hf, ids, mask=None):
    """Activations from transformers: hidden states, attentions and forward hooks on its modules."""
    seen, handles = {}, []

    def keep(name, use_input=False):
        def fn(module, args, output):
            seen[name] = (args[0] if use_input else output if torch.is_tensor(output) else output[0]).detach()
        return fn

    for i, block in enumerate(hf.transformer.h):
        for name, module, use_input in [("ln1", block.ln_1, False), ("ln2", block.ln_2, False),
                                        ("qkv", block.attn.c_attn, False), ("z", block.attn.c_proj, True),
                                        ("attn_out", block.attn, False), ("pre", block.mlp.c_fc, False),
                                        ("post", block.mlp.act, False), ("mlp_out", block.mlp, False)]:
            handles.append(module.register_forward_hook(keep(f"{i}.{name}", use_input)))
    handles.append(hf.transformer.ln_f.register_forward_hook(keep("ln_f")))
    positions = None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = hf(ids, attention_mask=mask, position_ids=positions, output_hidden_states=True,
                 output_attentions=True)
    for handle in handles:
        handle.remove()
    return out, seen


def ln_scale(x, eps=1e-5):
    return (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()


def normed(x):
    return (x - x.mean(-1, keepdim=True)) / ln_scale(x)


@torch.no_grad()
def test_every_cached_activation_equals_transformers_internals(pair):
    ours, theirs = pair
    ids = torch.randint(0, 1000, (2, 11), generator=torch.Generator().manual_seed(0))
    logits, cache = ours.run_with_cache(ids)
    out, hf = hf_internals(theirs, ids)
    close = dict(rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, out.logits, **close)
    assert set(cache) == set(hook_names(2)) - {"blocks.0.attn.hook_result", "blocks.1.attn.hook_result"}
    H, D = 4, 16
    for i in range(2):
        q, k, v = hf[f"{i}.qkv"].split(64, dim=2)
        resid_pre = out.hidden_states[i]
        resid_mid = resid_pre + hf[f"{i}.attn_out"]
        expected = {
            "hook_resid_pre": resid_pre, "ln1.hook_scale": ln_scale(resid_pre), "ln1.hook_normalized": normed(resid_pre),
            "attn.hook_q": q.view(2, 11, H, D), "attn.hook_k": k.view(2, 11, H, D), "attn.hook_v": v.view(2, 11, H, D),
            "attn.hook_pattern": out.attentions[i], "attn.hook_z": hf[f"{i}.z"].view(2, 11, H, D),
            "hook_attn_out": hf[f"{i}.attn_out"], "hook_resid_mid": resid_mid, "ln2.hook_scale": ln_scale(resid_mid),
            "ln2.hook_normalized": normed(resid_mid), "mlp.hook_pre": hf[f"{i}.pre"], "mlp.hook_post": hf[f"{i}.post"],
            "hook_mlp_out": hf[f"{i}.mlp_out"], "hook_resid_post": resid_mid + hf[f"{i}.mlp_out"],
        }
        for name, value in expected.items():
            torch.testing.assert_close(cache[f"blocks.{i}.{name}"], value, **close, msg=name)
        for ln, hf_out in (("ln1", hf[f"{i}.ln1"]), ("ln2", hf[f"{i}.ln2"])):  # what the LayerNorm module returns
            module = getattr(ours.h[i], "ln_1" if ln == "ln1" else "ln_2")
            torch.testing.assert_close(cache[f"blocks.{i}.{ln}.hook_normalized"] * module.weight + module.bias, hf_out,
                                       **close)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], out.hidden_states[1], **close)
    torch.testing.assert_close(cache["ln_final.hook_normalized"] * ours.ln_f.weight + ours.ln_f.bias, hf["ln_f"],
                               **close)
    torch.testing.assert_close(cache["ln_final.hook_scale"], ln_scale(cache["blocks.1.hook_resid_post"]), **close)
    torch.testing.assert_close(cache["hook_embed"] + cache["hook_pos_embed"], out.hidden_states[0], **close)
    scores = cache["blocks.1.attn.hook_attn_scores"]
    assert scores.shape == (2, 4, 11, 11) and (scores[..., 0, 1:] == torch.finfo(torch.float32).min).all()
    assert torch.equal(cache["pattern", 1], cache["blocks.1.attn.hook_pattern"])


@torch.no_grad()
def test_a_left_padded_row_caches_what_it_caches_alone(pair):
    ours, _ = pair
    row = torch.randint(0, 1000, (1, 6), generator=torch.Generator().manual_seed(1))
    batch = torch.cat([torch.zeros(1, 3, dtype=torch.long), row], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    _, alone = ours.run_with_cache(row)
    _, padded = ours.run_with_cache(batch, attention_mask=mask)
    for name in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.1.mlp.hook_post"):
        torch.testing.assert_close(padded[name][:, 3:], alone[name], rtol=0, atol=1e-5)
    torch.testing.assert_close(padded["blocks.0.attn.hook_pattern"][..., 3:, 3:], alone["blocks.0.attn.hook_pattern"],
                               rtol=0, atol=1e-6)


@torch.no_grad()
def test_patching_a_residual_reproduces_the_other_runs_logits(pair):
    ours, _ = pair
    clean = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(2))
    corrupt = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(3))
    name = "blocks.0.hook_resid_post"
    clean_logits, clean_cache = ours.run_with_cache(clean, names_filter=[name])
    patched = ours.run_with_hooks(corrupt, [(name, lambda x, hook: clean_cache[hook.name])])
    assert torch.equal(patched, clean_logits)  # everything after the patch is the clean run's computation
    # a full cache computes attention explicitly (for its patterns): the same logits up to float rounding
    full_logits, full_cache = ours.run_with_cache(clean)
    torch.testing.assert_close(full_logits, clean_logits, rtol=0, atol=1e-5)
    assert not torch.allclose(ours(corrupt), clean_logits, atol=1e-3)  # the patch is what made them equal


@torch.no_grad()
def test_zero_ablating_a_head_removes_exactly_its_output(pair):
    ours, _ = pair
    ids = torch.randint(0, 1000, (1, 9), generator=torch.Generator().manual_seed(4))
    _, clean = ours.run_with_cache(ids)

    def ablate(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    with ours.hooks([("blocks.1.attn.hook_z", ablate)]):
        _, ablated = ours.run_with_cache(ids)
    w = ours.h[1].attn.c_proj.weight.view(4, 16, 64)[2]  # head 2's rows of the output projection [D, C]
    head_out = clean["blocks.1.attn.hook_z"][:, :, 2] @ w  # [B, T, C]
    torch.testing.assert_close(ablated["blocks.1.hook_attn_out"], clean["blocks.1.hook_attn_out"] - head_out,
                               rtol=0, atol=1e-5)
    assert torch.equal(ablated["blocks.1.hook_resid_pre"], clean["blocks.1.hook_resid_pre"])  # upstream untouched
    result = ours.run_with_cache(ids, names_filter=["blocks.1.attn.hook_result"])[1]["blocks.1.attn.hook_result"]
    torch.testing.assert_close(result[:, :, 2], head_out, rtol=0, atol=1e-5)


def test_hooks_are_removed_even_when_one_raises(pair):
    ours, _ = pair

    def broken(x, hook):
        raise RuntimeError("bad hook")

    with pytest.raises(RuntimeError, match="bad hook"):
        ours.run_with_hooks(torch.tensor([[1, 2, 3]]), [("blocks.0.mlp.hook_post", broken)])
    assert ours.hook_fns == {}
    with pytest.raises(KeyError, match="no hook point 'blocks.0.mlp.hook_mid'"):
        ours.run_with_hooks(torch.tensor([[1, 2, 3]]), [("blocks.0.mlp.hook_mid", broken)])
    assert ours.hook_fns == {}


@torch.no_grad()
def test_decomposition_and_logit_lens_add_up(pair):
    ours, _ = pair
    ids = torch.randint(0, 1000, (2, 7), generator=torch.Generator().manual_seed(5))
    logits, cache = ours.run_with_cache(ids)
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    torch.testing.assert_close(parts.sum(0), cache["blocks.1.hook_resid_post"], rtol=0, atol=1e-4)
    resid, labels = cache.accumulated_resid(return_labels=True)
    assert labels == ["0_pre", "1_pre", "final_post"] and resid.shape == (3, 2, 7, 64)
    lens = logit_lens(ours, cache)
    assert lens.shape == (3, 2, 7, 1000)
    torch.testing.assert_close(lens[-1], logits, rtol=0, atol=1e-5)


def test_no_hook_means_the_plain_fast_path(pair, monkeypatch):
    ours, _ = pair

    def never(*args, **kwargs):
        raise AssertionError("the hooked path ran without hooks")

    monkeypatch.setattr(minigpt.model, "hooked_features", never)
    ours(torch.tensor([[1, 2, 3]]))
    ours.generate(torch.tensor([[1, 2, 3]]), 4)


@torch.no_grad()
def test_generation_returns_the_activations_of_the_whole_sequence(pair):
    """`return_cache=True`: the cache of prompt + generated tokens equals a clean run over the output, padding
    included (a left-padded batch: each row's activations as the row alone)."""
    ours, _ = pair
    batch = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out, cache = ours.generate(batch, 6, attention_mask=mask, eos_token_id=-1, return_cache=True)
    assert out.shape == (2, 11) and cache["blocks.1.hook_resid_post"].shape == (2, 11, 64)
    _, alone = ours.run_with_cache(out[:1, 2:])
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"][:1, 2:], alone["blocks.1.hook_resid_post"],
                               rtol=0, atol=1e-5)
    _, clean = ours.run_with_cache(out[1:])
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"][1:], clean["blocks.0.attn.hook_pattern"],
                               rtol=0, atol=1e-6)
    assert ours.hook_fns == {}


@torch.no_grad()
def test_direct_logit_attribution_adds_up_to_the_logit_difference(pair):
    ours, _ = pair
    ids = torch.randint(0, 1000, (2, 7), generator=torch.Generator().manual_seed(6))
    logits, cache = ours.run_with_cache(ids)
    right, wrong = torch.tensor([3, 17]), torch.tensor([99, 4])  # one token pair per row, at every position
    attrs = cache.logit_attrs(cache.decompose_resid(), right, wrong)  # [n, B, T]
    diff = logits.gather(-1, right[:, None, None].expand(2, 7, 1))[..., 0] - \
        logits.gather(-1, wrong[:, None, None].expand(2, 7, 1))[..., 0]
    torch.testing.assert_close(attrs.sum(0) + cache.ln_bias_attr(right, wrong)[:, None], diff, rtol=0, atol=1e-4)
    heads, labels = cache.stack_head_results(return_labels=True)
    assert heads.shape == (8, 2, 7, 64) and labels[:5] == ["L0H0", "L0H1", "L0H2", "L0H3", "L1H0"]
    bias = ours.h[0].attn.c_proj.bias
    torch.testing.assert_close(heads[:4].sum(0) + bias, cache["blocks.0.hook_attn_out"], rtol=0, atol=1e-5)
    named = ours.run_with_cache(ids, names_filter=lambda n: n.endswith(("hook_result", "hook_z")))[1]
    torch.testing.assert_close(named.stack_head_results(), heads, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_the_inspect_command_writes_pictures_and_a_page_that_needs_no_network(text_model_dir, tmp_path):
    import matplotlib.image

    from helpers import REPO_ROOT, run_script

    out = tmp_path / "pictures"
    proc = run_script(str(REPO_ROOT / "scripts" / "inspect_model.py"), "--model", str(text_model_dir),
                      "--prompt", "When Mary and John went to the store", "--out", str(out), "--layers", "1")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["attention_L1.png", "head_attribution.png", "index.html", "logit_lens.png"]
    assert proc.stdout.split() == [str(out / n) for n in ("attention_L1.png", "logit_lens.png",
                                                           "head_attribution.png", "index.html")]
    for name in names[:2] + names[3:]:
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50 and image.std() > 0
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "http" not in page and "<script" not in page


def test_inspect_errors_are_one_line(tiny_dir, capsys, monkeypatch):
    import sys

    from minigpt.cli.inspect import main

    assert main(["--model", str(tiny_dir), "--prompt", "x", "--out", "o", "--top-heads", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --top-heads must be >= 1, got 0"]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extra were not installed
    assert main(["--model", str(tiny_dir), "--prompt", "x", "--out", "o"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install \"minigpt[inspect]\"" in err[0], err


@torch.no_grad()
def test_the_cache_equals_transformer_lens_bridge_on_every_shared_name(text_model_dir):
    """TransformerLens 4 boots a minigpt checkpoint directory; on every hook name both have, the values agree."""
    pytest.importorskip("transformer_lens", reason="transformer_lens is optional (pip install transformer-lens)")
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2TokenizerFast

    bridge = TransformerBridge.boot_transformers(str(text_model_dir),
                                                 tokenizer=GPT2TokenizerFast.from_pretrained(str(text_model_dir)))
    ours = GPT.from_pretrained(str(text_model_dir))
    ids = torch.tensor([[464, 3290, 373, 1043, 287, 257, 2214]])
    logits_bridge, theirs = bridge.run_with_cache(ids)
    logits, cache = ours.run_with_cache(ids)
    torch.testing.assert_close(logits, logits_bridge, rtol=0, atol=1e-5)
    shared = set(cache) & set(theirs.keys())
    assert len(shared) == len(cache)  # every name minigpt caches is one of the bridge's
    for name in sorted(shared):
        assert cache[name].shape == theirs[name].shape, name
        torch.testing.assert_close(cache[name], theirs[name], rtol=0, atol=1e-5, msg=name)
