"""Instruction data: records, the template, masked labels, truncation, batches."""

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import synthetic_instructions, write_jsonl

from minigpt import GPT, MiniGPTError
from minigpt.train.data import (
    IGNORE_INDEX,
    DataError,
    PromptTemplate,
    Record,
    collate,
    load_examples,
    read_jsonl,
    split_eval,
    tokenize_record,
)
from minigpt.train import ResponseLoss


def test_template_renders_both_forms_and_keeps_braces():
    template = PromptTemplate()
    assert template.render("Say {hi}") == "### Instruction:\nSay {hi}\n\n### Response:\n"
    assert template.render("Translate", "{x} chat") == (
        "### Instruction:\nTranslate\n\n### Input:\n{x} chat\n\n### Response:\n")


def test_template_renders_each_field_once():
    """Text that looks like a field stays as the user wrote it (the input is never pasted into the instruction)."""
    template = PromptTemplate()
    text = template.render("Repeat the word {input} twice", "cat")
    assert "Repeat the word {input} twice" in text and text.count("cat") == 1
    swapped = PromptTemplate(prompt="{instruction}", prompt_with_input="{instruction}|{input}")
    assert swapped.render("{input}", "{instruction}") == "{input}|{instruction}"


def test_template_round_trip_and_bad_files(tmp_path):
    custom = PromptTemplate(name="mine", prompt="Q: {instruction}\nA:", prompt_with_input="Q: {instruction} ({input})\nA:")
    custom.save(tmp_path)
    assert PromptTemplate.load(tmp_path) == custom
    (tmp_path / "bad.json").write_text(json.dumps({"prompt": "no placeholder"}))
    with pytest.raises(DataError, match="instruction"):
        PromptTemplate.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="no prompt template"):
        PromptTemplate.load(tmp_path / "missing")


def test_labels_cover_response_and_eos_only(tokenizer):
    template = PromptTemplate()
    record = Record(1, "Name a fruit.", "", "An apple.")
    example = tokenize_record(record, tokenizer, template, max_len=64)
    prompt_ids = tokenizer.encode(template.render("Name a fruit."))
    response_ids = tokenizer.encode("An apple.") + [tokenizer.eos_token_id]
    assert example.ids == prompt_ids + response_ids
    assert example.labels == [IGNORE_INDEX] * len(prompt_ids) + response_ids
    batch = collate([example], tokenizer.eos_token_id)
    counted = batch.targets[0][batch.targets[0] != IGNORE_INDEX].tolist()
    assert counted == response_ids  # each response token (and EOS) is a target exactly once
    assert torch.equal(batch.input_ids[0], torch.tensor(example.ids[:-1]))


def test_alpaca_records_use_the_input_form(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Sum", "input": "2 and 3", "output": "5"},
                                                {"instruction": "Greet", "output": "Hello"}])
    examples, report = load_examples(path, tokenizer, PromptTemplate(), 64)
    template = PromptTemplate()
    assert examples[0].ids[: examples[0].prompt_len] == tokenizer.encode(template.render("Sum", "2 and 3"))
    assert examples[1].ids[: examples[1].prompt_len] == tokenizer.encode(template.render("Greet"))
    assert report.records == 2 and not report.skipped


def test_loss_counts_response_tokens_only(text_model_dir, tokenizer, tmp_path):
    """Perturbing logits where the labels are prompt (or padding) leaves the loss unchanged; a response
    position changes it; ResponseLoss equals a full cross entropy with the prompt masked out."""
    model = GPT.from_pretrained(str(text_model_dir))
    path = write_jsonl(tmp_path / "d.jsonl", synthetic_instructions(3))
    examples, _ = load_examples(path, tokenizer, PromptTemplate(), 128)
    batch = collate(examples, tokenizer.eos_token_id)
    with torch.no_grad():
        logits = model(batch.input_ids)  # [B, T, V]
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="sum")
        assert float(ResponseLoss(model)(batch.input_ids, batch.targets)) == pytest.approx(float(loss), rel=1e-6)
        ignored = batch.targets == IGNORE_INDEX
        noisy = torch.where(ignored[..., None], logits + 5 * torch.randn_like(logits), logits)
        assert torch.equal(F.cross_entropy(noisy.flatten(0, 1), batch.targets.flatten(), reduction="sum"), loss)
        # the labels themselves at prompt positions never reach the loss: any values, masked, same loss
        relabeled = torch.where(ignored, torch.randint_like(batch.targets, 50257), batch.targets)
        relabeled[ignored] = IGNORE_INDEX
        assert float(ResponseLoss(model)(batch.input_ids, relabeled)) == pytest.approx(float(loss), rel=1e-6)
        row, pos = (~ignored).nonzero()[0].tolist()
        shifted = logits.clone()
        shifted[row, pos] += 5 * torch.randn(logits.shape[-1])
        assert F.cross_entropy(shifted.flatten(0, 1), batch.targets.flatten(), reduction="sum") != loss
    assert batch.num_targets == sum(len(e.ids) - e.prompt_len for e in examples)


def test_padding_does_not_leak_between_examples(text_model_dir, tokenizer, tmp_path):
    """Each example's loss in a right-padded batch equals its loss alone."""
    model = GPT.from_pretrained(str(text_model_dir))
    records = synthetic_instructions(2) + [{"prompt": "A much longer instruction " * 6, "response": "ok " * 10}]
    examples, _ = load_examples(write_jsonl(tmp_path / "d.jsonl", records), tokenizer, PromptTemplate(), 128)
    loss_fn = ResponseLoss(model)
    with torch.no_grad():
        batch = collate(examples, tokenizer.eos_token_id)
        logits = model(batch.input_ids)
        for row, example in enumerate(examples):
            alone = collate([example], tokenizer.eos_token_id)
            in_batch = F.cross_entropy(logits[row], batch.targets[row], reduction="sum")
            assert float(in_batch) == pytest.approx(float(loss_fn(alone.input_ids, alone.targets)), rel=1e-5)


def test_truncation_and_dropping_are_reported(tmp_path, tokenizer):
    records = [{"prompt": "short", "response": "word " * 40},  # response cut
               {"prompt": "long " * 40, "response": "x"},  # prompt alone fills the context: dropped
               {"prompt": "fine", "response": "yes"}]
    examples, report = load_examples(write_jsonl(tmp_path / "d.jsonl", records), tokenizer, PromptTemplate(), 24)
    assert report.truncated == [1] and report.dropped == [2]
    assert [e.line for e in examples] == [1, 3]
    assert all(len(e.ids) <= 25 for e in examples)
    assert examples[0].ids[-1] != tokenizer.eos_token_id and examples[1].ids[-1] == tokenizer.eos_token_id
    assert "1 truncated" in report.summary() and "1 dropped" in report.summary()


BAD_LINES = {2: "{not json", 3: json.dumps({"prompt": "no response"}), 4: json.dumps({"prompt": "x", "response": " "}),
             5: json.dumps(["a list"]), 6: "", 7: json.dumps({"instruction": "i", "output": 3})}


def test_bad_lines_are_rejected_with_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", synthetic_instructions(3), BAD_LINES)
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert "5 bad record(s)" in message and "--skip-bad" in message
    for number, what in [(2, "invalid JSON"), (3, "missing field 'response'"), (4, "empty 'response'"),
                         (5, "expected a JSON object"), (7, "field 'output' must be a string")]:
        assert f"bad.jsonl:{number}: {what}" in message


def test_bad_lines_are_skipped_and_reported_when_asked(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", synthetic_instructions(3), BAD_LINES)
    records, problems = read_jsonl(path, skip_bad=True)
    assert [r.line for r in records] == [1, 8, 9]  # line 6 is blank: ignored, not an error
    assert [p.split(":")[1] for p in problems] == ["2", "3", "4", "5", "7"]


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no usable records"):
        read_jsonl(tmp_path / "empty.jsonl")


def test_eval_split_is_seeded_and_disjoint(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", synthetic_instructions(20))
    examples, _ = load_examples(path, tokenizer, PromptTemplate(), 128)
    train_a, eval_a = split_eval(examples, 0.25, seed=3)
    train_b, eval_b = split_eval(examples, 0.25, seed=3)
    assert [e.line for e in eval_a] == [e.line for e in eval_b] and len(eval_a) == 5
    assert {e.line for e in train_a} | {e.line for e in eval_a} == set(range(1, 21))
    assert not {e.line for e in train_a} & {e.line for e in eval_a}
    assert [e.line for e in split_eval(examples, 0.25, seed=4)[1]] != [e.line for e in eval_a]


# --------------------------------------------------------------------------- data from anywhere


def first_step_loss(data, out, model_dir):
    from minigpt.train import TrainConfig, train

    config = TrainConfig(data=str(data), out=str(out), model=str(model_dir), eval_fraction=0, batch_size=4,
                         max_steps=1, lr=1e-3, warmup_steps=0, seed=1)
    return train(config, progress=False).train_losses[0]


@pytest.mark.slow
def test_every_data_form_trains_like_its_jsonl(text_model_dir, tmp_path):
    import csv

    datasets = pytest.importorskip("datasets")
    records = synthetic_instructions(8)
    reference = first_step_loss(write_jsonl(tmp_path / "d.jsonl", records), tmp_path / "o0", text_model_dir)
    with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    (tmp_path / "d.json").write_text(json.dumps(records))
    table = datasets.Dataset.from_list(records)
    table.to_parquet(str(tmp_path / "d.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    for i, source in enumerate(["d.csv", "d.json", "d.parquet", "saved"], start=1):
        assert first_step_loss(tmp_path / source, tmp_path / f"o{i}", text_model_dir) == pytest.approx(
            reference, rel=1e-6), source


def test_bad_rows_are_named_in_every_form(tmp_path):
    (tmp_path / "d.csv").write_text("instruction,input,output\nSay hi,,hi\n,,empty instruction\n")
    with pytest.raises(DataError, match=r"d.csv:3: "):
        read_jsonl(tmp_path / "d.csv")
    (tmp_path / "d.json").write_text(json.dumps([{"prompt": "a", "response": "b"}, {"prompt": "a"}]))
    with pytest.raises(DataError, match=r"d.json\[1\]: "):
        read_jsonl(tmp_path / "d.json")


def test_datasets_forms_without_the_extra_or_offline_are_one_line(tmp_path, monkeypatch):
    import sys

    pytest.importorskip("datasets")
    with pytest.raises(DataError, match=r"cannot load dataset nobody/no-such-set\[train\]"):
        read_jsonl("nobody/no-such-set")  # the suite runs offline: the datasets cache only
    monkeypatch.setitem(sys.modules, "datasets", None)
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    with pytest.raises(MiniGPTError, match=r'pip install "minigpt\[data\]"'):
        read_jsonl(tmp_path / "d.parquet")


def test_hub_ids_carry_revision_subset_and_split_to_datasets(monkeypatch):
    datasets = pytest.importorskip("datasets")
    from minigpt.train.data import parse_dataset_id

    assert parse_dataset_id("org/set") == ("org/set", None, None, "train")
    assert parse_dataset_id("org/set:test") == ("org/set", None, None, "test")
    assert parse_dataset_id("org/set@v1.0:sub:validation") == ("org/set", "v1.0", "sub", "validation")
    calls = []

    def fake_load_dataset(name, subset=None, *, split, revision):
        calls.append((name, subset, split, revision))
        return [{"prompt": "a", "response": "b"}, {"prompt": "c"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataError, match=r"org/set@main\[validation\]:2: "):  # rows are named by id and split
        read_jsonl("org/set@main:sub:validation")
    assert calls == [("org/set", "sub", "validation", "main")]


@pytest.mark.slow
def test_renamed_columns_and_conversations_train_like_the_jsonl(text_model_dir, tmp_path):
    from minigpt.train import TrainConfig, train

    records = [{"prompt": r["prompt"], "response": r["response"]} for r in synthetic_instructions(8)]
    reference = first_step_loss(write_jsonl(tmp_path / "d.jsonl", records), tmp_path / "o0", text_model_dir)
    renamed = write_jsonl(tmp_path / "r.jsonl", [{"question": r["prompt"], "answer": r["response"]} for r in records])
    config = TrainConfig(data=str(renamed), out=str(tmp_path / "o1"), model=str(text_model_dir), eval_fraction=0,
                         batch_size=4, max_steps=1, lr=1e-3, warmup_steps=0, seed=1,
                         columns=(("prompt", "question"), ("response", "answer")))
    assert train(config, progress=False).train_losses[0] == pytest.approx(reference, rel=1e-6)
    chats = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}
             for r in records]
    assert first_step_loss(write_jsonl(tmp_path / "c.jsonl", chats), tmp_path / "o2", text_model_dir) == \
        pytest.approx(reference, rel=1e-6)


def test_conversational_rows_become_minigpt_records():
    from minigpt.train.data import normalize_row
    from minigpt.train.preferences import parse_preference

    user = {"role": "user", "content": "Name a colour."}
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello."}, user]
    assert normalize_row({"messages": [user, {"role": "assistant", "content": "Red."}]}) == \
        {"prompt": "Name a colour.", "response": "Red."}
    assert normalize_row({"messages": turns + [{"role": "assistant", "content": "Red."}]})["prompt"] == \
        "System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Name a colour."
    explicit = {"prompt": [user], "chosen": [{"role": "assistant", "content": "Red."}],
                "rejected": [{"role": "assistant", "content": "Tuesday."}]}
    implicit = {"chosen": [user, {"role": "assistant", "content": "Red."}],
                "rejected": [user, {"role": "assistant", "content": "Tuesday."}]}
    for row in (explicit, implicit):
        record = parse_preference(normalize_row(row), 1)
        assert (record.prompt, record.responses) == ("Name a colour.", ("Red.", "Tuesday."))
    assert normalize_row({"prompt": [user]}) == {"prompt": "Name a colour."}


def test_bad_conversations_and_missing_columns_are_named(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            {"messages": [{"role": "robot", "content": "a"}]},
            {"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}]
    write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(DataError, match=r"c.jsonl:2: messages\[0\]: role must be one of") as info:
        read_jsonl(tmp_path / "c.jsonl")
    assert "2 bad record(s)" in str(info.value)
    write_jsonl(tmp_path / "r.jsonl", [{"question": "a", "answer": "b"}, {"query": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"r.jsonl:2: no field 'question' \(given as the prompt field\)"):
        read_jsonl(tmp_path / "r.jsonl", columns=(("prompt", "question"), ("response", "answer")))
