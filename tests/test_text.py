"""Text-level generation: padding prompts, streaming detokenisation, stop strings."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt import GPT, Tokenizer
from minigpt.sampling import SamplingParams
from minigpt.text import IncrementalDecoder, TextStreamer, complete, encode_prompts, stream_completions


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
