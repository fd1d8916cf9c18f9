"""Text-level generation: padding prompts, streaming detokenisation, stop strings."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt import GPT, Tokenizer
from minigpt.sampling import SamplingParams
from minigpt.text import (Completion, IncrementalDecoder, TextStreamer, beam_completions, complete, completion_logprobs,
                          encode_prompts, stream_completions)


def test_encode_prompts_left_pads(tokenizer):
    ids, mask = encode_prompts(tokenizer, ["hello world", "The", ""])
    assert ids.tolist()[0] == [31373, 995]
    assert mask.tolist() == [[1, 1], [0, 1], [0, 1]]
    assert ids[1, 1].item() == 464 and ids[2, 1].item() == 50256  # empty prompt starts from <|endoftext|>


def test_incremental_decoder_on_split_characters(tokenizer):
    text = "你好，世界 🚀👩‍👩‍👧 ok"
    ids = tokenizer.encode(text)
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push([i]) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces), "never emits half a character"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=50256), max_size=40))
def test_streamed_text_equals_full_decode_for_any_ids(tokenizer, ids):
    decoder = IncrementalDecoder(tokenizer)
    streamed = "".join(decoder.push([i]) for i in ids) + decoder.flush()
    assert streamed == tokenizer.decode(ids)


def test_streamer_holds_back_partial_stop_string(tokenizer):
    streamer = TextStreamer(tokenizer, stops=["END"])
    out = [streamer.push(tokenizer.encode(piece)) for piece in ["abc E", "N", "D more"]]
    assert out == ["abc ", "", ""] and streamer.stopped
    assert streamer.text[: streamer.emitted] == "abc "
    streamer = TextStreamer(tokenizer, stops=["END"])
    assert streamer.push(tokenizer.encode("abc E")) == "abc "
    assert streamer.push(tokenizer.encode("x")) == "Ex", "released once it cannot be a stop string"
    assert streamer.push(tokenizer.encode(" EN")) == " "
    assert streamer.finish() == "EN", "held-back text is released at the end"
    assert not streamer.stopped


def steer_to_tokens(model, tokens):
    """Make the model's output favour `tokens` equally: ln_f emits u, and only those tokens' rows align with u."""
    with torch.no_grad():
        u = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(0))
        model.ln_f.weight.zero_()
        model.ln_f.bias.copy_(u)
        model.wte.weight[tokens] = 5 * u


def test_stream_equals_non_streamed_on_multibyte_output(text_model_dir):
    model = GPT.from_pretrained(str(text_model_dir))
    tok = Tokenizer.from_pretrained(text_model_dir)
    # the byte-level pieces of CJK and emoji: the output splits characters (and makes invalid sequences too)
    pieces = sorted({t for t in tok.encode("你好，世界🚀👩‍👩‍👧") if not _is_whole(tok, t)})
    assert len(pieces) >= 4
    steer_to_tokens(model, pieces)
    prompts = ["日本語", "🙂 emoji", ""]
    params = SamplingParams(do_sample=True)
    events = list(stream_completions(model, tok, prompts, 40, params=params, num_return_sequences=2, seed=3))
    results = events[-1]
    assert len(results) == 6
    for row, result in enumerate(results):
        assert set(result.new_ids) <= set(pieces) and len(result.new_ids) == 40
        streamed = "".join(piece for r, piece in events[:-1] if r == row)
        assert streamed == result.completion == tok.decode(result.new_ids)
        assert result.text == result.prompt + result.completion
    assert results[0].prompt == "日本語" and results[4].prompt == ""


def _is_whole(tok, token):
    try:
        tok.decode_bytes([token]).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_greedy_completion_matches_library_generate(text_model_dir):
    model = GPT.from_pretrained(str(text_model_dir))
    tok = Tokenizer.from_pretrained(text_model_dir)
    [result] = complete(model, tok, "The sky is", 20)
    ids = torch.tensor([tok.encode("The sky is")])
    ref = model.generate(ids, 20, eos_token_id=50256)[0, ids.shape[1]:].tolist()
    assert result.new_ids == [t for t in ref if t != 50256][: len(result.new_ids)]
    assert result.completion == tok.decode(result.new_ids)


def test_stop_string_cuts_text(text_model_dir):
    model = GPT.from_pretrained(str(text_model_dir))
    tok = Tokenizer.from_pretrained(text_model_dir)
    [free] = complete(model, tok, "Once", 30)
    stop = free.completion[10:13]
    assert stop, "need some generated text to pick a stop string from"
    [cut] = complete(model, tok, "Once", 30, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.completion == free.completion[: free.completion.find(stop)]
    assert len(cut.new_ids) < len(free.new_ids)


def test_beam_completions_with_truncated_context_keep_every_new_token(text_model_dir):
    """The prompt is cut to fit; the completion holds all the new tokens and reports the prompt actually used."""
    model = GPT.from_pretrained(str(text_model_dir))  # 256 positions
    tok = Tokenizer.from_pretrained(text_model_dir)
    prompt = " ".join(f"word{i}" for i in range(200))
    full = tok.encode(prompt)
    assert len(full) > 256
    with pytest.warns(UserWarning, match="truncated"):
        results = beam_completions(model, tok, prompt, 10, num_beams=2, num_return_sequences=2, context="truncate")
    room = 256 - 10 + 1
    for result in results:
        assert result.prompt_ids == full[-room:]
        assert result.prompt == tok.decode(full[-room:])
        assert len(result.new_ids) == 10 or result.finish_reason == "eos"
        assert result.completion == tok.decode(result.new_ids)


def test_logprobs_report_only_tokens_inside_the_returned_text(text_model_dir):
    """A stop string is cut from the text (and stays in new_ids): its tokens are not reported."""
    model = GPT.from_pretrained(str(text_model_dir))
    tok = Tokenizer.from_pretrained(text_model_dir)
    new = tok.encode(" hello world. and more")
    cut = Completion("Say", " hello world", tok.encode("Say"), new, "stop")
    logprobs = completion_logprobs(model, tok, cut, 3)
    assert logprobs["tokens"] == [" hello", " world"]
    assert all(offset < len(cut.text) for offset in logprobs["text_offset"])
    assert logprobs["text_offset"] == [3, 9]


def test_logprobs_at_the_longest_length_generation_accepts(text_model_dir):
    """T + new - 1 = n_positions is a valid generation; its log-probs are the cached loop's, uncached."""
    model = GPT.from_pretrained(str(text_model_dir))  # 256 positions
    tok = Tokenizer.from_pretrained(text_model_dir)
    prompt_ids = tok.encode(" ".join(["cat"] * 200))[:200]
    new = 57  # 200 + 57 - 1 = 256
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, new, eos_token_id=-1, return_dict=True)
    new_ids = out.sequences[0, 200:].tolist()
    completion = Completion(tok.decode(prompt_ids), tok.decode(new_ids), prompt_ids, new_ids)
    logprobs = completion_logprobs(model, tok, completion, 2)
    reported = len(logprobs["token_logprobs"])
    assert reported >= new - 2  # all but tokens that add no text of their own at the very end
    torch.testing.assert_close(torch.tensor(logprobs["token_logprobs"]), out.token_logprobs[0, :reported].float(),
                               rtol=0, atol=1e-4)


def test_top_logprobs_give_byte_pieces_distinct_keys(text_model_dir):
    """Pieces of one character decode alike (U+FFFD); OpenAI's `bytes:` form keeps every token its own key."""
    model = GPT.from_pretrained(str(text_model_dir))
    tok = Tokenizer.from_pretrained(text_model_dir)
    new = tok.encode("a🚀")
    completion = Completion("x", tok.decode(new), tok.encode("x"), new)
    logprobs = completion_logprobs(model, tok, completion, 50257)
    for top in logprobs["top_logprobs"]:
        assert len(top) == 50257
    assert any(key.startswith("bytes:\\x") for key in logprobs["tokens"])
    assert logprobs["tokens"][0] == "a"
