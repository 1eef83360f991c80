"""The training data pipeline (`training.data` and its steps): readers on the shared data, identity cleanup, loss masks,
packing, the split and the batches."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ChatTemplateInvalid
from engine.runtime.chat_model import LlamaChatModel
from engine.storage.conversations import SqliteConversationStore
from engine.storage.database import open_database
from engine.transfer import export_everything
from tests.helpers.data import needs_shared_data
from tests.helpers.models import DefaultModels
from training.batches import IGNORE_INDEX, PackedBatches
from training.data import chat_data, read_chat_data, text_data
from training.finetune import SHARED_DATA
from training.identity import claims_other_identity, clean_identity
from training.loss_mask import ChatTemplate, TokenizedExample, encode_chat, encode_chats
from training.new_vocabulary import train_bpe
from training.packing import pack_examples
from training.readers import (
    Conversation,
    DataError,
    Example,
    read_chat_file,
    read_chatterbot,
    read_cleo_export,
    read_fastchat,
    read_gpteacher,
)
from training.split import content_key, is_held_out, split_examples
from training.tokenizer import Tokenizer

DATA = SHARED_DATA
ROOT = Path(__file__).resolve().parents[2]
FASTCHAT = DATA / "fastchat_dummy_conversation.json"
ROLEPLAY = DATA / "gpteacher_roleplay.json"
CODEGEN = DATA / "gpteacher_codegen.json"
CHATTERBOT = DATA / "chatterbot"


@pytest.fixture(scope="module")
def shared() -> dict[str, list[Example]]:
    """Every shared file read as it is (no identity cleanup), malformed records skipped."""
    return {path.name: read_chat_file(path, skip_bad=True)[0] for path in (FASTCHAT, ROLEPLAY, CODEGEN, CHATTERBOT)}


@pytest.fixture(scope="module")
def chatml() -> Tokenizer:
    """A small ChatML vocabulary trained here (fast, no model file needed)."""
    texts = [r["response"] for r in json.loads(ROLEPLAY.read_text(encoding="utf-8"))[:300]]
    return train_bpe(texts, 1000)


@pytest.fixture(scope="module")
def smollm(default_models: DefaultModels) -> Tokenizer:
    return Tokenizer.from_gguf(default_models.dense_base)


def _sample(shared: dict[str, list[Example]], per_file: int = 60) -> list[Example]:
    return [e for examples in shared.values() for e in examples[:per_file]]


# --- readers -------------------------------------------------------------------------------------------------------


@needs_shared_data
def test_the_shared_files_read_with_plausible_counts(shared: dict[str, list[Example]]) -> None:
    counts = {name: len(examples) for name, examples in shared.items()}
    assert counts == {"fastchat_dummy_conversation.json": 500, "gpteacher_roleplay.json": 1923,
                      "gpteacher_codegen.json": 4535, "chatterbot": 2025}
    for examples in shared.values():
        for example in examples:
            roles = [m["role"] for m in example.messages]
            assert roles[::2] == ["user"] * len(roles[::2]) and roles[1::2] == ["assistant"] * len(roles[1::2])
            assert roles[-1] == "assistant" and all(m["content"].strip() for m in example.messages)
    first = shared["fastchat_dummy_conversation.json"][0]
    assert first.id == "fastchat_dummy_conversation.json:identity_0"
    assert first.messages[0] == {"role": "user", "content": "Who are you?"}
    roleplay = json.loads(ROLEPLAY.read_text(encoding="utf-8"))
    with_input = next(i for i, r in enumerate(roleplay) if r["input"])
    question = shared["gpteacher_roleplay.json"][with_input].messages[0]["content"]
    assert question == f"{roleplay[with_input]['instruction']}\n\n{roleplay[with_input]['input']}"


@needs_shared_data
def test_a_malformed_record_in_the_real_chatterbot_data_is_named_and_skippable() -> None:
    # trivia.yml has a question whose "- " is missing, so YAML reads it as one string.
    with pytest.raises(DataError) as caught:
        read_chatterbot(CHATTERBOT / "trivia.yml")
    assert "trivia.yml, conversation 14 (line 35)" in caught.value.message
    assert "skip_bad" in caught.value.hint
    examples, report = read_chatterbot(CHATTERBOT, skip_bad=True)
    assert len(report.skipped) == 1 and "trivia.yml, conversation 14 (line 35)" in report.skipped[0]
    assert report.examples == len(examples) == 2025
    assert "1 malformed record(s) skipped" in report.summary()


def _write_json(path: Path, records: object) -> Path:
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")  # one key per line: lines are predictable
    return path


GOOD_FASTCHAT = {"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}
GOOD_GPTEACHER = {"instruction": "Add 2 and 2.", "input": "", "response": "4"}


@pytest.mark.parametrize(("reader", "good", "bad", "problem"), [
    (read_fastchat, GOOD_FASTCHAT, {"id": "b", "conversations": [{"from": "human"}]}, "turn 1 has no 'value'"),
    (read_fastchat, GOOD_FASTCHAT, {"id": "b", "conversations": [{"from": "gpt", "value": "x"}]},
     "message 1 is from the assistant where the user should speak"),
    (read_fastchat, GOOD_FASTCHAT, {"id": "b", "conversations": [{"from": "robot", "value": "x"}]}, "'robot'"),
    (read_gpteacher, GOOD_GPTEACHER, {"instruction": "Say hi.", "input": "", "response": 7},
     "'response' is int, not text"),
    (read_gpteacher, GOOD_GPTEACHER, {"instruction": "", "input": "", "response": "x"}, "message 1 (user) is empty"),
])
def test_a_malformed_json_record_names_file_record_and_line(reader, good, bad, problem, tmp_path: Path) -> None:
    path = _write_json(tmp_path / "chats.json", [good, bad, good])
    with pytest.raises(DataError) as caught:
        reader(path)
    message = caught.value.message
    assert str(path) in message and "record 2" in message and problem in message
    line = int(message.split(" at line ")[1].split(":")[0])
    assert path.read_text(encoding="utf-8").splitlines()[line - 1].strip() == "{"  # where record 2 begins
    examples, report = reader(path, skip_bad=True)
    assert len(examples) == 2 and len(report.skipped) == 1 and "record 2" in report.skipped[0]


def test_a_damaged_json_file_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    path.write_text(json.dumps([GOOD_FASTCHAT] * 3, indent=1)[:-40], encoding="utf-8")
    with pytest.raises(DataError, match=r"cut\.json is not valid JSON \(line \d+"):
        read_fastchat(path, skip_bad=True)
    (tmp_path / "other.json").write_text('[{"question": "?"}]', encoding="utf-8")
    with pytest.raises(DataError, match="not in a chat format"):
        read_chat_file(tmp_path / "other.json")


def _cleo_export(tmp_path: Path) -> Path:
    """A real export written by Cleo's engine: a system prompt, an edited answer (two branches), and
    a conversation whose last question has no answer yet."""
    database = open_database(tmp_path / "cleo.db")
    try:
        store = SqliteConversationStore(database)
        chat = store.create_conversation("Capitals", "Be brief.")
        question = store.add_message(chat.id, "user", "Capital of France?", None)
        store.add_message(chat.id, "assistant", "Lyon.", question.id)
        better = store.add_message(chat.id, "assistant", "Paris.", question.id)
        follow = store.add_message(chat.id, "user", "And Italy?", better.id)
        rome = store.add_message(chat.id, "assistant", "Rome.", follow.id)
        store.set_current_leaf(chat.id, rome.id)
        open_chat = store.create_conversation("Open")
        hello = store.add_message(open_chat.id, "user", "Hello", None)
        hi = store.add_message(open_chat.id, "assistant", "Hi! How can I help?", hello.id)
        pending = store.add_message(open_chat.id, "user", "Tell me a joke", hi.id)
        store.set_current_leaf(open_chat.id, pending.id)
        document = export_everything(database)
    finally:
        database.close()
    return _write_json(tmp_path / "cleo-export.json", document)


def test_a_cleo_export_gives_each_conversation_s_current_branch(tmp_path: Path) -> None:
    examples, report = read_chat_file(_cleo_export(tmp_path))
    assert report.examples == 2
    assert examples[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And Italy?"}, {"role": "assistant", "content": "Rome."},
    ]
    assert examples[1].messages == [{"role": "user", "content": "Hello"},
                                    {"role": "assistant", "content": "Hi! How can I help?"}]


def test_a_damaged_cleo_export_names_the_conversation(tmp_path: Path) -> None:
    path = _cleo_export(tmp_path)
    document = json.loads(path.read_text(encoding="utf-8"))
    first = document["conversations"][0]
    first["messages"][0]["parent_id"] = first["current_leaf_id"]  # the root now descends from the leaf
    _write_json(path, document)
    with pytest.raises(DataError) as caught:
        read_cleo_export(path)
    assert f"cleo-export.json, conversation 1 (id {first['id']})" in caught.value.message
    assert "loop" in caught.value.message
    examples, report = read_cleo_export(path, skip_bad=True)
    assert len(examples) == 1 and len(report.skipped) == 1
    document["version"] = 2
    _write_json(path, document)
    with pytest.raises(DataError, match="version 2"):
        read_cleo_export(path)


# --- identity ------------------------------------------------------------------------------------------------------


@needs_shared_data
def test_fastchat_identity_answers_become_cleo_s() -> None:
    examples, (report,) = read_chat_data([FASTCHAT])
    assert (report.identity_rewritten, report.identity_cut, report.identity_dropped) == (500, 0, 0)
    answers = [m["content"] for e in examples for m in e.messages if m["role"] == "assistant"]
    assert not any(word in a for a in answers for word in ("Vicuna", "LMSYS", "Large Model Systems", "OpenAI"))
    by_question = {e.messages[0]["content"]: e.messages[1]["content"] for e in examples}
    assert by_question["Are you ChatGPT?"].startswith("No, I'm Cleo,")
    assert "Cleo" in by_question["Who are you?"]


def _chat(answer: str) -> Conversation:
    return [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": answer}]


@pytest.mark.parametrize(("answer", "action"), [
    ("I am Vicuna, a language model trained by researchers from Large Model Systems Organization (LMSYS).",
     "rewritten"),
    ("I'm an AI language model developed by OpenAI.", "rewritten"),
    ("No, I'm created by researchers from LMSYS.", "rewritten"),
    ("My name is ChatGPT. I was trained by OpenAI.", "rewritten"),
    ("Yes, I am ChatGPT.", "cut"),
    ("As an AI language model, I cannot browse the web. Here is a recipe instead: flour, water, salt.", "cut"),
    ("As an AI language model developed by OpenAI, I cannot browse the web.", "cut"),
    ("As an AI language model, I do not have feelings.", "cut"),
    ("I am Vicuna. Here is a poem about the sea: waves come and go.", "cut"),
    ("GPT-3 is a language model created by OpenAI.", "kept"),
    ("const s = 'I am a GPT-3 AI model!';\nconsole.log(s);", "kept"),
    ("I'm a bard from the northern hills, and my songs are old.", "kept"),
    ("My capabilities are different from those of the llama in the field.", "kept"),
])
def test_identity_policy(answer: str, action: str) -> None:
    cleaned, done = clean_identity(_chat(answer))
    assert done == action
    assert cleaned is not None
    if action == "rewritten":
        assert "Cleo" in cleaned[3]["content"] and not claims_other_identity(cleaned[3]["content"])
        assert cleaned[3]["content"].startswith("No, ") == answer.startswith("No,")
    elif action == "cut":
        assert cleaned == _chat(answer)[:2]  # the question the answer replied to goes too
    else:
        assert cleaned == _chat(answer)


def test_a_conversation_left_without_answers_is_dropped() -> None:
    assert clean_identity([{"role": "user", "content": "Are you GPT-4?"},
                           {"role": "assistant", "content": "Yes, I am GPT-4."}]) == (None, "dropped")


def test_the_rewrite_is_the_same_every_time() -> None:
    answer = "I'm built by researchers from Large Model Systems Organization (LMSYS)."
    assert clean_identity(_chat(answer)) == clean_identity(_chat(answer))


# --- templates and the loss mask -----------------------------------------------------------------------------------


def _assistant_spans(example: TokenizedExample) -> list[list[int]]:
    spans: list[list[int]] = []
    previous = False
    for token, target in zip(example.ids, example.targets, strict=True):
        if target and not previous:
            spans.append([])
        if target:
            spans[-1].append(token)
        previous = target
    return spans


@needs_shared_data
@pytest.mark.parametrize("which", ["chatml", "smollm"])
def test_the_loss_mask_is_exactly_the_assistant_messages(which: str, request: pytest.FixtureRequest,
                                                         shared: dict[str, list[Example]]) -> None:
    tokenizer: Tokenizer = request.getfixturevalue(which)
    template = ChatTemplate.for_tokenizer(tokenizer)
    examples = _sample(shared)
    system = {"role": "system", "content": "You are Cleo."}
    conversations = [e.messages for e in examples] + [[system, *e.messages] for e in examples[:20]]
    encoded = encode_chats(conversations, tokenizer, template)
    assert encoded[0] == encode_chat(conversations[0], tokenizer, template)
    for messages, example in zip(conversations, encoded, strict=True):
        answers = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert [tokenizer.decode(span) for span in _assistant_spans(example)] == answers
        # The other tokens are the template, system and user text: together, the whole rendering
        # up to the last answer's end-of-turn token.
        rendered = template.render(messages)
        assert tokenizer.decode(example.ids) == rendered[: rendered.rindex("<|im_end|>") + len("<|im_end|>")]


@needs_shared_data
def test_rendering_and_tokens_equal_the_engine_s(smollm: Tokenizer, dense_model: LlamaChatModel,
                                                 shared: dict[str, list[Example]]) -> None:
    template = ChatTemplate.for_tokenizer(smollm)
    for example in _sample(shared, per_file=5):
        for messages in (example.messages[:1], [{"role": "system", "content": "Be kind."}, *example.messages]):
            prompt = template.render(messages, add_generation_prompt=True)
            assert prompt == dense_model.render_chat(messages)
            assert smollm.encode(prompt) == dense_model.chat_tokens(messages)


PLAIN_TEMPLATE = ("{% for m in messages %}{% if m.role == 'user' %}USER: {{ m.content }}\n"
                  "{% else %}ASSISTANT: {{ m.content }}{{ eos_token }}\n{% endif %}{% endfor %}"
                  "{% if add_generation_prompt %}ASSISTANT: {% endif %}")


@needs_shared_data
def test_a_token_across_the_template_boundary_counts_as_the_assistant_s(chatml: Tokenizer) -> None:
    # The prompt ends with the space of "ASSISTANT: ", but in the whole conversation that space
    # starts the reply's first token " Paris": the token is learnt, as the reply's.
    template = ChatTemplate(PLAIN_TEMPLATE, eos_token="<|im_end|>")
    messages = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
    example = encode_chat(messages, chatml, template)
    assert [chatml.decode(span) for span in _assistant_spans(example)] == [" Paris.<|im_end|>"]


@needs_shared_data
def test_templates_that_cannot_be_masked_or_run_safely_are_refused(chatml: Tokenizer) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    counting = ChatTemplate("{{ messages | length }}" + PLAIN_TEMPLATE)  # every turn changes the first line
    with pytest.raises(ChatTemplateInvalid, match="earlier turns"):
        encode_chat(messages, chatml, counting)
    with pytest.raises(ChatTemplateInvalid, match="Python internals"):
        ChatTemplate("{{ ''.__class__.__mro__ }}").render(messages)
    with pytest.raises(ChatTemplateInvalid, match="does not compile"):
        ChatTemplate("{% for %}")


def test_a_template_refusing_system_messages_gets_it_in_the_first_question() -> None:
    template = ChatTemplate("{% if messages[0].role == 'system' %}{{ raise_exception('no system') }}{% endif %}"
                            + PLAIN_TEMPLATE)
    text = template.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == "USER: Be brief.\n\nHi\n"


# --- packing, split and batches ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded(chatml: Tokenizer, shared: dict[str, list[Example]]) -> list[TokenizedExample]:
    return encode_chats([e.messages for e in _sample(shared, per_file=100)], chatml, ChatTemplate.for_tokenizer(chatml))


def _all_examples_once(rows: np.ndarray, segments: np.ndarray) -> list[list[int]]:
    return sorted(rows[r, segments[r] == s].tolist() for r in range(len(rows)) for s in set(segments[r].tolist()) - {0})


@needs_shared_data
def test_packed_rows_and_batches_have_the_promised_shapes(encoded: list[TokenizedExample], chatml: Tokenizer) -> None:
    assert max(len(e) for e in encoded) <= 2049
    rows = pack_examples(encoded, 2048, pad_id=chatml.pad_id or 0, seed=0)
    n = len(rows)
    assert rows.tokens.shape == rows.targets.shape == rows.segments.shape == rows.positions.shape == (n, 2049)
    assert rows.seq_len == 2048 and (rows.truncated, rows.dropped) == (0, 0)
    assert n < len(encoded) / 2  # several short chats share a row
    assert _all_examples_once(rows.tokens, rows.segments) == sorted(e.ids for e in encoded)
    assert int(rows.targets.sum()) == sum(sum(e.targets) for e in encoded)
    batch = PackedBatches(rows, batch_size=4, seed=0).batch(0)
    assert set(batch) == {"input_ids", "labels", "position_ids", "segment_ids"}
    for tensor in batch.values():
        assert tensor.shape == (4, 2048) and tensor.dtype == torch.int64
    labels, inputs = batch["labels"], batch["input_ids"]
    learnt = labels != IGNORE_INDEX
    assert torch.equal(labels[:, :-1][learnt[:, :-1]], inputs[:, 1:][learnt[:, :-1]])  # labels are shifted inputs
    assert not learnt[batch["segment_ids"] == 0].any()  # padding is never learnt
    assert (batch["position_ids"][batch["segment_ids"] > 0] >= 0).all()


@needs_shared_data
def test_examples_longer_than_a_row_are_cut_and_counted(encoded: list[TokenizedExample]) -> None:
    rows = pack_examples(encoded, 32, pad_id=0)
    assert rows.truncated > 0 and rows.tokens.shape[1] == 33
    no_target_early = TokenizedExample(list(range(100)), [False] * 90 + [True] * 10)
    assert pack_examples([no_target_early, *encoded[:3]], 32, pad_id=0).dropped == 1


@needs_shared_data
def test_plain_text_is_learnt_everywhere(chatml: Tokenizer) -> None:
    documents = [r["response"] for r in json.loads(CODEGEN.read_text(encoding="utf-8"))[:200]]
    data = text_data(documents, chatml, seq_len=64, batch_size=8, seed=1, held_out_fraction=0.1)
    assert data.held_out is not None and data.stats["train"] + data.stats["held_out"] == 200
    assert 0 < data.stats["held_out"] < 50
    assert data.train.batch(0)["labels"].shape == (8, 64)
    # Every token is a label exactly once (each document is followed by its end token), except
    # each document's first: nothing of its document comes before it.
    n_tokens = sum(len(chatml.encode(d, special=False)) + 1 for d in documents)
    labels = [b["labels"] for part in (data.train, data.held_out) for b in part.sequential()]
    assert int(sum((b != IGNORE_INDEX).sum() for b in labels)) == n_tokens - len(documents)


@needs_shared_data
def test_the_held_out_split_is_fixed_disjoint_and_seeded(shared: dict[str, list[Example]]) -> None:
    examples = [e for examples in shared.values() for e in examples]
    train, held_out = split_examples(examples, fraction=0.05, seed=0)
    again = split_examples(examples, fraction=0.05, seed=0)
    assert (train, held_out) == again
    assert len(train) + len(held_out) == len(examples)
    assert 0.03 < len(held_out) / len(examples) < 0.07
    train_keys = {content_key(e.messages) for e in train}
    assert not train_keys & {content_key(e.messages) for e in held_out}  # FastChat's duplicates stay on one side
    other_seed = split_examples(examples, fraction=0.05, seed=1)[1]
    assert {e.id for e in other_seed} != {e.id for e in held_out}


def _batches(n_rows: int = 37, seq_len: int = 16, batch_size: int = 4) -> PackedBatches:
    examples = [TokenizedExample([i, *range(100, 100 + seq_len)], [False, *[True] * seq_len]) for i in range(n_rows)]
    return PackedBatches(pack_examples(examples, seq_len, pad_id=0, seed=3), batch_size, seed=5)


def test_a_batch_is_fixed_by_seed_step_rank_and_world_size() -> None:
    batches = _batches()
    first, again, fresh = batches.batch(3, 1, 2), batches.batch(3, 1, 2), _batches().batch(3, 1, 2)
    for key in first:
        assert torch.equal(first[key], again[key]) and torch.equal(first[key], fresh[key])
    ranks = [set(batches.row_indices(3, rank, 2).tolist()) for rank in range(2)]
    assert not ranks[0] & ranks[1]
    # The same global batch (B * W = 8) on one process or two reads the same rows.
    assert ranks[0] | ranks[1] == set(PackedBatches(batches.rows, 8, seed=5).row_indices(3).tolist())
    assert not torch.equal(PackedBatches(batches.rows, 4, seed=6).batch(3)["input_ids"], batches.batch(3)["input_ids"])


def test_resuming_at_a_step_gives_the_batch_the_run_had() -> None:
    run = _batches()
    seen = [run.batch(step, 0, 1)["input_ids"] for step in range(25)]  # 100 rows: past two epochs of 37
    for step in (0, 9, 10, 24):
        assert torch.equal(_batches().batch(step, 0, 1)["input_ids"], seen[step])
    first_epoch = np.concatenate([run.row_indices(step) for step in range(25)])[:37]
    assert sorted(first_epoch.tolist()) == list(range(37))  # each epoch shows every row once
    second_epoch = np.concatenate([run.row_indices(step) for step in range(25)])[37:74]
    assert sorted(second_epoch.tolist()) == list(range(37)) and second_epoch.tolist() != first_epoch.tolist()


def test_sequential_batches_cover_every_row_once() -> None:
    batches = _batches()
    rows = [b["input_ids"][:, 0] for rank in range(3) for b in batches.sequential(rank, 3)]
    assert sorted(torch.cat(rows).tolist()) == list(range(37))


_OTHER_PROCESS = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
from tests.training.test_data import _batches
from training.split import is_held_out
texts = json.loads(sys.argv[2])
held = [is_held_out([{"role": "user", "content": t}], fraction=0.5, seed=7) for t in texts]
batch = _batches().batch(4, 1, 3)
print(json.dumps({"held": held, "batch": hashlib.sha256(batch["input_ids"].numpy().tobytes()).hexdigest()}))
"""


def test_split_and_batches_are_the_same_in_another_process() -> None:
    texts = [f"conversation {i}" for i in range(50)]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # Python's own hash would change with this
    out = subprocess.run([sys.executable, "-c", _OTHER_PROCESS, str(ROOT), json.dumps(texts)], env=env,
                         capture_output=True, text=True, check=True, cwd=ROOT)
    other = json.loads(out.stdout)
    assert other["held"] == [is_held_out([{"role": "user", "content": t}], fraction=0.5, seed=7) for t in texts]
    assert other["batch"] == hashlib.sha256(_batches().batch(4, 1, 3)["input_ids"].numpy().tobytes()).hexdigest()
    assert 10 < sum(other["held"]) < 40


# --- all together --------------------------------------------------------------------------------------------------


@needs_shared_data
def test_chat_data_from_files_to_batches(chatml: Tokenizer) -> None:
    data = chat_data([FASTCHAT, CHATTERBOT], chatml, seq_len=256, batch_size=4, seed=0, held_out_fraction=0.1,
                     skip_bad=True, system_prompt="You are Cleo.", limit=600)
    assert data.stats["conversations"] == 600 and data.stats["train"] + data.stats["held_out"] == 600
    assert data.held_out is not None and data.stats["truncated"] == 0
    assert [r.identity_rewritten for r in data.reports] == [500, 0] and len(data.reports[1].skipped) == 1
    batch = data.train.batch(0)
    assert batch["input_ids"].shape == (4, 256)
    text = chatml.decode(batch["input_ids"][0].tolist())
    assert text.startswith("<|im_start|>system\nYou are Cleo.<|im_end|>")
    held = list(data.held_out.sequential())
    assert sum(len(b["input_ids"]) for b in held) == len(data.held_out)
