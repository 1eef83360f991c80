"""Memory on real SQLite + sqlite-vec + the real MiniLM embedder (and the real MoE for whole turns)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.chat.assistant import Assistant, TurnOptions
from engine.events import MemoryUpdated, Recalled, RecalledItem, Token, Usage
from engine.memory.book import MemoryBook
from engine.memory.learning import EXTRACTION_SCHEMA, AskJson
from engine.memory.recall import Recall
from engine.memory.turn_memory import LongTermMemory
from engine.profile import open_profile
from engine.runtime.chat_model import LlamaChatModel
from engine.runtime.embedder import Embedder
from engine.runtime.sampling import Sampling
from engine.settings import Settings
from engine.storage.conversations import SqliteConversationStore
from engine.storage.database import Database, open_database
from tests.helpers.models import DefaultModels

SHORT = TurnOptions(sampling=Sampling(temperature=0.0, max_tokens=8))
CANARY = "zqxcanary7731"


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path / "cleo.db")
    yield database
    database.close()


@pytest.fixture
def book(database: Database, embedder: Embedder) -> MemoryBook:
    return MemoryBook(database, embedder)


def _hooks(database: Database, embedder: Embedder) -> LongTermMemory:
    return LongTermMemory(MemoryBook(database, embedder), Recall(database, embedder), SqliteConversationStore(database))


def test_a_contradiction_supersedes_the_old_memory_and_keeps_it_in_the_history(book: MemoryBook) -> None:
    _, lisbon = book.add("I live in Lisbon", "profile")
    porto = book.supersede(lisbon.id, "I moved to Porto last month", reason="the user said they moved")
    old = book.get(lisbon.id)
    assert (old.status, old.superseded_by) == ("superseded", porto.id)
    assert [m.content for m in book.memories()] == ["I moved to Porto last month."]
    history = book.history(porto.id)
    assert [(e.action, e.content) for e in history] == [
        ("added", "I live in Lisbon."), ("added", "I moved to Porto last month."), ("superseded", "I live in Lisbon.")]
    found = Recall(book.database, book.embedder).search("which city do I live in", k=3, messages=False)
    assert [i.text for i in found] == ["I moved to Porto last month."]
    book.invalidate(porto.id, reason="the user moved abroad")
    assert book.memories() == [] and book.get(porto.id).status == "invalidated"
    assert [e.action for e in book.history(porto.id)][-1] == "invalidated"


def test_saying_the_same_thing_again_bumps_the_memory_instead_of_adding_one(book: MemoryBook) -> None:
    _, first = book.add("My favourite colour is green")
    action, again = book.add("my favourite colour is green!")
    assert action == "bumped" and again.id == first.id and again.use_count == 1
    action, _ = book.add("My favorite color is green")  # same meaning, other spelling
    assert action == "bumped" and len(book.memories()) == 1
    assert book.add("I am allergic to peanuts")[0] == "added" and len(book.memories()) == 2


def test_a_repeat_is_found_behind_many_near_identical_proposals(book: MemoryBook) -> None:
    for _ in range(12):  # waiting in the inbox: nearer to the repeat than the kept memory, but not active
        book.add("My favorite colour is green", propose=True)
    _, kept = book.add("My favourite colour is green")
    action, again = book.add("My favorite colour is green")
    assert action == "bumped" and again.id == kept.id and len(book.memories()) == 1


def test_proposals_wait_in_the_inbox_until_approved_or_rejected(book: MemoryBook) -> None:
    _, tea = book.add("The user drinks green tea every morning", "preference", propose=True)
    _, secret = book.add(f"The user's locker code is {CANARY}", propose=True)
    assert {m.id for m in book.inbox()} == {tea.id, secret.id} and book.memories() == []
    book.approve(tea.id)
    book.reject(secret.id)
    assert [m.id for m in book.memories()] == [tea.id] and book.inbox() == []
    assert all(CANARY not in e.content for e in book.history(secret.id))
    assert [e.action for e in book.history(secret.id)] == ["proposed", "rejected"]


def test_remember_and_forget_in_chat(database: Database, embedder: Embedder) -> None:
    hooks = _hooks(database, embedder)
    chat = hooks.store.create_conversation()
    said = hooks.store.add_message(chat.id, "user", "Remember that my daughter's name is Ines.", None)
    [update] = hooks.on_user_message(chat.id, said)
    assert update.action == "added" and "Ines" in update.text
    memory = hooks.book.get(update.memory_id)
    assert memory.source_message_id == said.id and memory.source_conversation_id == chat.id
    assert "Ines" in hooks.context_for(hooks.store.create_conversation().id, "what is my daughter called").text
    said = hooks.store.add_message(chat.id, "user", "Please forget my daughter's name.", said.id)
    [update] = hooks.on_user_message(chat.id, said)
    assert update.action == "forgotten" and hooks.book.memories() == []
    assert hooks.on_user_message(chat.id, hooks.store.add_message(chat.id, "user", "Forget the weather", None)) == []


def test_recall_finds_a_fact_stated_three_conversations_ago(
    database: Database, embedder: Embedder, moe_model: LlamaChatModel
) -> None:
    hooks = _hooks(database, embedder)
    moe_model.forget()
    assistant = Assistant(moe_model, Settings(temperature=0.0), store=hooks.store, memory=hooks)
    for text in ("My sister Maria just moved to Porto for her new job.", "What is a good recipe for pancakes?",
                 "How do I change a bicycle tyre?"):
        list(assistant.turn(assistant.new_conversation(), text, SHORT))
    events = list(assistant.turn(assistant.new_conversation(), "Which city did my sister move to?", SHORT))
    recalled = next(e for e in events if isinstance(e, Recalled))
    assert "Maria just moved to Porto" in recalled.items[0].text
    assert recalled.items[0].kind == "message" and recalled.items[0].role == "user"
    assert any(isinstance(e, Token) for e in events)
    prompt = moe_model.detokenize(moe_model.cached_tokens)
    assert prompt.index("Maria just moved to Porto") > prompt.index("You are Cleo")  # after the instructions
    assert prompt.index("Maria just moved to Porto") < prompt.index("Which city did my sister move to?")


def test_memory_block_is_stable_and_first(database: Database, embedder: Embedder, moe_model: LlamaChatModel) -> None:
    hooks = _hooks(database, embedder)
    hooks.book.add("The user's name is Ada", "profile")
    hooks.book.add("Always answer in British English", "instruction")
    moe_model.forget()
    assistant = Assistant(moe_model, Settings(temperature=0.0), store=hooks.store, memory=hooks)
    chat = assistant.new_conversation()
    events = list(assistant.turn(chat, "Remember that I work as a nurse.", SHORT))
    assert any(isinstance(e, MemoryUpdated) and e.action == "added" for e in events)
    block = hooks.pinned_block(chat)
    assert block.index("Ada") < block.index("British English") and "nurse" not in block  # facts are recalled
    follow_up = list(assistant.turn(chat, "And what do you know about me?", SHORT))
    usage = next(e for e in follow_up if isinstance(e, Usage))
    assert usage.cached_tokens > 40  # the block did not change, so the prefix was reused


def test_a_temporary_chat_reads_no_memory_and_leaves_nothing(database: Database, embedder: Embedder,
                                                             moe_model: LlamaChatModel) -> None:
    hooks = _hooks(database, embedder)
    hooks.book.add("The user's name is Ada", "profile")
    moe_model.forget()
    assistant = Assistant(moe_model, Settings(temperature=0.0), store=hooks.store, memory=hooks)
    chat = hooks.store.create_conversation(temporary=True).id
    events = list(assistant.turn(chat, f"Remember that my code is {CANARY}.", SHORT))
    assert not any(isinstance(e, (MemoryUpdated, Recalled)) for e in events)
    assert "Ada" not in moe_model.detokenize(moe_model.cached_tokens)
    hooks.store.close_temporary(chat)
    assert hooks.store.search(CANARY) == [] and len(hooks.book.memories()) == 1
    assert _canary_in_files(database.path) == []


def test_deleted_conversations_and_memories_leave_no_trace_in_the_files(database: Database,
                                                                         embedder: Embedder) -> None:
    hooks = _hooks(database, embedder)
    chat = hooks.store.create_conversation("Secrets")
    said = hooks.store.add_message(chat.id, "user", f"My password hint is {CANARY}, keep it safe.", None)
    hooks.store.add_message(chat.id, "assistant", f"I will not repeat {CANARY}.", said.id)
    _, memory = hooks.book.add(f"The user's password hint is {CANARY}", source_message_id=said.id,
                               source_conversation_id=chat.id)
    assert hooks.book.derived_from(chat.id) == [memory]  # what the window asks about before deleting
    hooks.book.embed_missing()
    vectors = [row[0] for table in ("message_vectors", "memory_vectors")
               for row in database.conn.execute(f"SELECT embedding FROM {table}")]
    database.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    assert _canary_in_files(database.path)  # the test can see it before
    assert len(vectors) == 3 and all(_in_files(database.path, vector) for vector in vectors)
    hooks.store.delete_conversation(chat.id)
    hooks.book.forget(memory.id)
    assert _canary_in_files(database.path) == []
    assert database.conn.execute("SELECT count(*) FROM message_vectors").fetchone() == (0,)
    assert database.conn.execute("SELECT count(*) FROM memory_vectors").fetchone() == (0,)
    # A vector says much of what its text said: it goes too, not just its row.
    assert [vector for vector in vectors if _in_files(database.path, vector)] == []


def test_forget_everything_wipes_memories_and_their_log(book: MemoryBook) -> None:
    book.add(f"The user's bank is {CANARY}")
    book.add("The user likes jazz", "preference")
    book.forget_everything()
    assert book.memories() == [] and book.conn.execute("SELECT count(*) FROM memory_log").fetchone() == (0,)
    assert _canary_in_files(book.database.path) == []


def test_rows_left_without_vectors_are_filled_in_at_startup(tmp_path: Path, default_models: DefaultModels) -> None:
    path = tmp_path / "cleo.db"
    database = open_database(path)
    store = SqliteConversationStore(database)
    chat = store.create_conversation()
    store.add_message(chat.id, "user", "The spare key is under the blue flowerpot.", None)  # no vector: "crash"
    database.close()
    memories = open_profile(path, embedder_path=default_models.embedder)
    try:
        assert memories.database.conn.execute("SELECT count(*) FROM message_vectors").fetchone() == (1,)
        found = memories.recall.search("where did I hide the key", k=1, mode="dense")
        assert "flowerpot" in found[0].text
    finally:
        memories.close()


def _canary_in_files(path: Path) -> list[str]:
    return _in_files(path, CANARY.encode())


def _in_files(path: Path, data: bytes) -> list[str]:
    # Not the lock file: empty, and Windows refuses to read a byte another handle has locked.
    return [p.name for p in path.parent.glob(path.name + "*") if p.suffix != ".lock" and data in p.read_bytes()]


def _turn(hooks: LongTermMemory, user_text: str, reply_text: str) -> str:
    chat = hooks.store.create_conversation()
    user = hooks.store.add_message(chat.id, "user", user_text, None)
    reply = hooks.store.add_message(chat.id, "assistant", reply_text, user.id)
    hooks.after_turn(chat.id, [user, reply])
    return user.id


def test_learned_facts_go_to_the_inbox_and_corrections_supersede_once_approved(
    database: Database, embedder: Embedder
) -> None:
    hooks = _hooks(database, embedder)
    _, old = hooks.book.add("The user lives in Lisbon", "profile")
    said = _turn(hooks, "I have a dog called Rex.", "Rex is a great name!")
    asked: list[list[dict[str, str]]] = []

    def model_says(decision: dict[str, str]) -> AskJson:
        def ask(messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
            asked.append(messages)
            assert schema == EXTRACTION_SCHEMA
            return decision
        return ask

    [update] = hooks.learn(model_says({"action": "ADD", "memory_id": "", "kind": "fact",
                                       "content": "The user has a dog called Rex"}))
    assert update.action == "proposed" and "Rex" in asked[0][1]["content"]
    proposal = hooks.book.get(update.memory_id)
    assert proposal.status == "proposed" and proposal.source_message_id == said

    _turn(hooks, "We moved to Porto last week.", "Congratulations on the move!")
    [update] = hooks.learn(model_says({"action": "SUPERSEDE", "memory_id": old.id[:8], "kind": "profile",
                                       "content": "The user lives in Porto"}))
    assert f"{old.id[:8]}: The user lives in Lisbon." in asked[1][1]["content"]  # the model saw what it corrects
    assert hooks.book.get(old.id).status == "active"  # nothing changes before the user approves
    hooks.book.approve(update.memory_id)
    assert hooks.book.get(old.id).superseded_by == update.memory_id
    assert [m.content for m in hooks.book.memories(kind="profile")] == ["The user lives in Porto."]

    _turn(hooks, "Nice weather today.", "It is!")
    assert hooks.learn(model_says({"action": "NONE", "memory_id": "", "kind": "fact", "content": ""})) == []
    _turn(hooks, "Thanks", "You're welcome")
    assert hooks.learn(model_says({"action": "SUPERSEDE", "memory_id": "nope", "kind": "fact", "content": ""})) == []


def test_learning_can_stop_after_each_turn_and_resume_where_it_stopped(database: Database, embedder: Embedder) -> None:
    hooks = _hooks(database, embedder)
    chat = hooks.store.create_conversation()
    hooks.on_evict(chat.id, [hooks.store.add_message(chat.id, "user", "Plan a trip to Gerês.", None),
                             hooks.store.add_message(chat.id, "assistant", "Start at Campo do Gerês.", None)])
    for text in ("I have a dog called Rex.", "My sister lives in Porto.", "I play the cello."):
        _turn(hooks, text, "Nice!")
    asked: list[str] = []

    def ask(messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
        asked.append(messages[-1]["content"])
        if schema != EXTRACTION_SCHEMA:
            return {"summary": "The user planned a trip to the Geres mountains."}
        return {"action": "ADD", "memory_id": "", "kind": "fact", "content": f"Fact {len(asked)}"}

    assert hooks.learning_pending
    [summary] = hooks.learn(ask, at_most=1)  # the evicted turns are summarised first
    assert "Geres" in hooks.book.get(summary.memory_id).content and len(asked) == 1
    [first] = hooks.learn(ask, at_most=1)
    assert "Rex" in asked[1] and hooks.learning_pending
    rest = hooks.learn(ask)
    assert "Porto" in asked[2] and "cello" in asked[3] and len(rest) == 2
    assert not hooks.learning_pending and hooks.learn(ask, at_most=1) == []
    assert [hooks.book.get(u.memory_id).content for u in (first, *rest)] == ["Fact 2.", "Fact 3.", "Fact 4."]


def test_what_was_not_learned_before_cleo_closed_is_learned_after_it_reopens(
    tmp_path: Path, embedder: Embedder
) -> None:
    database = open_database(tmp_path / "profile.db")
    hooks = _hooks(database, embedder)
    _turn(hooks, "I have a dog called Rex.", "Rex is a great name!")
    deleted = hooks.store.create_conversation()
    hooks.after_turn(deleted.id, [hooks.store.add_message(deleted.id, "user", "I like jazz.", None)])
    hooks.store.delete_conversation(deleted.id)  # its pending learning goes with it
    database.close()  # closed (or crashed) before the idle moment when learning runs

    database = open_database(tmp_path / "profile.db")
    hooks = _hooks(database, embedder)
    asked: list[str] = []

    def ask(messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
        asked.append(messages[-1]["content"])
        return {"action": "ADD", "memory_id": "", "kind": "fact", "content": "The user has a dog called Rex"}

    assert hooks.learning_pending
    [update] = hooks.learn(ask)
    assert len(asked) == 1 and "Rex" in asked[0] and "jazz" not in asked[0]
    assert hooks.book.get(update.memory_id).content == "The user has a dog called Rex."
    assert not hooks.learning_pending
    database.close()


def test_what_a_reply_recalled_is_kept_by_reference_and_drops_out_when_deleted(
    database: Database, embedder: Embedder
) -> None:
    hooks = _hooks(database, embedder)
    _, cat = hooks.book.add("The user's cat is called Miso", "fact")
    other = hooks.store.create_conversation()
    said = hooks.store.add_message(other.id, "user", "Miso chewed my headphones again.", None)
    chat = hooks.store.create_conversation()
    question = hooks.store.add_message(chat.id, "user", "What is my cat called?", None)
    reply = hooks.store.add_message(chat.id, "assistant", "Miso.", question.id)
    items = [RecalledItem("memory", "The user's cat is called Miso.", 0.9, cat.created_at, None, None, cat.id),
             RecalledItem("message", said.content, 0.5, said.created_at, other.id, said.id, role="user")]
    hooks.on_recalled(reply.id, items)
    assert hooks.recalled_in(chat.id) == {reply.id: tuple(items)}
    hooks.store.delete_conversation(other.id)
    assert hooks.recalled_in(chat.id) == {reply.id: tuple(items[:1])}
    hooks.book.forget(cat.id)
    assert hooks.recalled_in(chat.id) == {}


def test_without_asking_first_learned_facts_are_remembered_at_once(database: Database, embedder: Embedder) -> None:
    hooks = _hooks(database, embedder)
    hooks.ask_before_remembering = False
    _, old = hooks.book.add("The user works as a teacher", "profile")
    _turn(hooks, "I quit teaching and became a nurse.", "That's a big change!")
    [update] = hooks.learn(lambda messages, schema: {"action": "SUPERSEDE", "memory_id": old.id[:8],
                                                     "kind": "profile", "content": "The user works as a nurse"})
    assert update.action == "superseded" and hooks.book.get(old.id).status == "superseded"


def test_the_loaded_model_answers_the_extraction_with_valid_json(
    database: Database, embedder: Embedder, moe_model: LlamaChatModel
) -> None:
    hooks = _hooks(database, embedder)
    moe_model.forget()
    assistant = Assistant(moe_model, Settings(temperature=0.0), store=hooks.store, memory=hooks)
    chat = assistant.new_conversation()
    list(assistant.turn(chat, "My sister Maria lives in Porto and I have a dog called Rex.", SHORT))
    updates = assistant.learn()
    proposals = hooks.book.inbox()
    assert [u.memory_id for u in updates] == [m.id for m in proposals]  # what it decided is what was stored
    assert all(m.source_conversation_id == chat and len(m.content) <= 201 for m in proposals)
    events = list(assistant.turn(chat, "What is my dog called?", SHORT))
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.cached_tokens > 30  # the side question did not cost the conversation its cache


def test_finished_conversations_and_evicted_turns_become_recallable_summaries(
    database: Database, embedder: Embedder
) -> None:
    hooks = _hooks(database, embedder)
    chat = hooks.store.create_conversation()
    user = hooks.store.add_message(chat.id, "user", "Help me plan a hiking trip to the Gerês mountains.", None)
    reply = hooks.store.add_message(chat.id, "assistant", "Sure: start at Campo do Gerês...", user.id)
    hooks.store.set_current_leaf(chat.id, reply.id)
    summary = {"summary": "The user planned a hiking trip to the Geres mountains, starting at Campo do Geres."}
    hooks.conversation_finished(chat.id)
    hooks.conversation_finished(chat.id)  # left twice before learning ran: summarised once
    [update] = hooks.learn(lambda messages, schema: summary)
    event = hooks.book.get(update.memory_id)
    assert event.kind == "event" and event.source_conversation_id == chat.id and "hiking trip" in event.content
    row = database.conn.execute("SELECT first_message_id, last_message_id, memory_id FROM summaries").fetchone()
    assert row == (user.id, reply.id, event.id)
    hooks.conversation_finished(chat.id)  # nothing new since: nothing to summarise
    assert hooks.learn(lambda messages, schema: summary) == []
    found = hooks.recall.search("when did I plan the hike", k=1, messages=False)
    assert found[0].memory_id == event.id

    hooks.on_evict(chat.id, [user, reply])
    asked: list[str] = []

    def ask(messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
        asked.append(messages[1]["content"])
        return {"summary": ""}

    assert hooks.learn(ask) == []  # an empty summary is not stored
    assert "Gerês mountains" in asked[0]  # the evicted turns were what the model was asked about
