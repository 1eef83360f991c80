"""The Session's product rules, without Qt: on a real profile (SQLite, sqlite-vec) with a scripted model.

The model is scripted because these tests are about what the Session decides (what deleting a
chat forgets, which settings reload the model, which model a chat uses, the order of turns from
two frontends), not about llama.cpp; `tests/app/test_cli.py` and the window's tests run it all
on the real model.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.chat.assistant import Turn
from engine.chat.model import ChatModel, api_sequences
from engine.chat.requests import TurnTicket
from engine.errors import Busy, ModelFileInvalid, ModelMissing
from engine.events import Done, Event, Failed, Started, Token
from engine.profile import open_profile
from engine.runtime.sampling import Sampling
from engine.session import Session, open_session
from engine.settings import Settings, load_settings
from tests.helpers.models import write_tiny_gguf
from tests.helpers.scripted_model import ScriptedChatModel

SETTINGS = Settings(ask_before_remembering=False)


class Loader:
    """Loads scripted models and remembers which files it was asked for."""

    def __init__(self, fail_on: str = "") -> None:
        self.loaded: list[Path] = []
        self.fail_on = fail_on

    def __call__(self, path: Path, settings: Settings) -> ChatModel:
        if self.fail_on and path.name == self.fail_on:
            raise ModelFileInvalid(f"{path} is damaged.")
        self.loaded.append(path)
        return ScriptedChatModel(path=path, fallback=f"Written by {path.stem}.", parallel=api_sequences(settings))


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    return write_tiny_gguf(tmp_path / "first.gguf"), write_tiny_gguf(tmp_path / "second.gguf")


@pytest.fixture
def open_one(models: tuple[Path, Path]) -> Iterator[Callable[..., Session]]:
    sessions: list[Session] = []

    def make(settings: Settings = SETTINGS, loader: Loader | None = None) -> Session:
        loader = loader or Loader()
        first = models[0]
        session = Session(open_profile(embedder_path=Path("no-embedder.gguf")), loader(first, settings),
                          settings.updated(chat_model=str(first)), load_model=loader)
        sessions.append(session)
        return session
    yield make
    for session in sessions:
        session.close()


def reply(session: Session, conversation_id: str, text: str) -> tuple[str, list[Event]]:
    ticket = session.send(conversation_id, text)
    events = list(session.run(ticket))
    return ticket.conversation_id, events


def test_a_message_in_a_new_chat_is_answered_stored_and_listed(open_one: Callable[..., Session]) -> None:
    session = open_one()
    chat, events = reply(session, "", "What is the capital of France?")
    assert isinstance(events[0], Started) and isinstance(events[-1], Done)
    assert "".join(e.text for e in events if isinstance(e, Token)) == "Written by first."
    view = session.view(chat)
    assert [(m.role, m.content) for m in view.messages] == [
        ("user", "What is the capital of France?"), ("assistant", "Written by first.")]
    assert [c.id for c in session.conversations()] == [chat]


def test_a_window_chat_waits_for_one_api_request_not_for_all_of_them(open_one: Callable[..., Session]) -> None:
    session = open_one()
    chats = [session.new_chat() for _ in range(4)]
    api = [session.send(chat, f"API question {i}", frontend="api") for i, chat in enumerate(chats[:3])]
    window = session.send(chats[3], "The window's question")
    received: list[Event] = []
    reader = threading.Thread(target=lambda: received.extend(api[0].events(timeout=10)))
    reader.start()
    order = [ticket for ticket, event in _drain(session) if isinstance(event, Started)]
    reader.join(10)
    assert order == [api[0], window, api[1], api[2]]
    assert isinstance(received[0], Started) and isinstance(received[-1], Done)  # the API's own stream


def test_stop_ends_only_the_turn_it_was_asked_for(open_one: Callable[..., Session]) -> None:
    session = open_one()
    release = threading.Event()
    session.assistant.model = ScriptedChatModel(["one two three four"], path=session.assistant.model.path,
                                                release=release)
    running = session.send(session.new_chat(), "Tell a story", frontend="api")
    waiting = session.send(session.new_chat(), "Hello")
    session.step(0.0)  # the API's reply has started
    running.stop()
    release.set()
    events = _drain(session)
    assert [e.finish_reason for t, e in events if isinstance(e, Done)] == ["stopped", "stop"]
    assert waiting.ended.is_set()


def test_deleting_a_chat_forgets_what_was_learned_from_it_only_when_asked(open_one: Callable[..., Session]) -> None:
    session = open_one()
    kept_chat, _ = reply(session, "", "I live in Lisbon.")
    gone_chat, _ = reply(session, "", "My cat is called Miso.")
    book = session.profile.book
    book.add("The user lives in Lisbon.", source_conversation_id=kept_chat)
    book.add("The user's cat is called Miso.", source_conversation_id=gone_chat)
    session.delete_chat(kept_chat, forget_what_was_learned=False)
    refresh = session.delete_chat(gone_chat, forget_what_was_learned=True)
    assert [m.content for m in book.memories()] == ["The user lives in Lisbon."]
    assert refresh.memories is not None and [m.content for m in refresh.memories.remembered] == [
        "The user lives in Lisbon."]
    assert refresh.conversations == ()


def test_a_chat_being_written_cannot_be_deleted(open_one: Callable[..., Session]) -> None:
    session = open_one()
    ticket = session.send("", "Hello")
    with pytest.raises(Busy, match="still replying"):
        session.delete_chat(ticket.conversation_id, forget_what_was_learned=True)


def test_only_settings_that_size_the_model_load_it_again(open_one: Callable[..., Session]) -> None:
    loader = Loader()
    session = open_one(loader=loader)
    cooler = session.apply_settings(session.settings.updated(temperature=0.1))
    assert cooler.model is None and len(loader.loaded) == 1 and session.assistant.settings.temperature == 0.1
    bigger = session.apply_settings(session.settings.updated(context_size=8192))
    assert bigger.model is not None and len(loader.loaded) == 2
    assert bigger.settings is not None and bigger.settings.context_size == 8192


def test_while_another_frontend_is_answered_settings_change_but_the_model_is_not_reloaded(
        open_one: Callable[..., Session]) -> None:
    loader = Loader()
    session = open_one(loader=loader)
    writing = session.send("", "Hello", frontend="api")
    cooler = session.apply_settings(session.settings.updated(temperature=0.2, api_save_chats=True))
    assert cooler.settings is not None and cooler.settings.api_save_chats
    assert session.assistant.settings.temperature == 0.2
    for reloading in ({"context_size": 8192}, {"api_enabled": True}):  # the API's sequences need a new context
        with pytest.raises(Busy, match="still writing"):
            session.apply_settings(session.settings.updated(**reloading))
    assert len(loader.loaded) == 1 and session.settings.context_size != 8192 and not session.settings.api_enabled
    list(session.run(writing))
    assert session.apply_settings(session.settings.updated(context_size=8192)).model is not None
    assert session.apply_settings(session.settings.updated(api_enabled=True, api_parallel=3)).model is not None
    assert session.assistant.model.parallel == 3 and len(loader.loaded) == 3
    assert session.apply_settings(session.settings.updated(api_port=9000)).model is None  # the API's own: no reload


def test_a_chat_with_its_own_model_loads_it_for_its_turns_and_the_others_keep_theirs(
        open_one: Callable[..., Session], models: tuple[Path, Path]) -> None:
    loader = Loader()
    session = open_one(loader=loader)
    own, _ = reply(session, "", "Hello")
    refresh = session.use_model_in_chat(own, str(models[1]))
    assert refresh.model is not None and refresh.model.name == "second"
    _, other = reply(session, "", "Hello again")
    assert "".join(e.text for e in other if isinstance(e, Token)) == "Written by first."
    _, back = reply(session, own, "And you?")
    assert "".join(e.text for e in back if isinstance(e, Token)) == "Written by second."
    assert [p.name for p in loader.loaded] == ["first.gguf", "second.gguf", "first.gguf", "second.gguf"]


def test_a_chat_whose_model_is_gone_says_so_and_stores_nothing(open_one: Callable[..., Session],
                                                                models: tuple[Path, Path]) -> None:
    session = open_one()
    chat, _ = reply(session, "", "Hello")
    session.use_model_in_chat(chat, str(models[1]))
    models[1].unlink()
    reply(session, "", "Another chat, on the settings' model")
    _, events = reply(session, chat, "Still there?")
    assert len(events) == 1 and isinstance(events[0], Failed) and isinstance(events[0].error, ModelMissing)
    assert "no longer there" in events[0].error.message
    assert len(session.view(chat).messages) == 2


def test_a_model_that_fails_to_load_leaves_the_one_before_serving(open_one: Callable[..., Session],
                                                                   models: tuple[Path, Path]) -> None:
    session = open_one(loader=Loader(fail_on="second.gguf"))
    with pytest.raises(ModelFileInvalid):
        session.use_model(str(models[1]))
    assert session.model_state().name == "first"
    _, events = reply(session, "", "Hello")
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "stop"


def test_leaving_a_temporary_chat_deletes_it_and_leaving_another_keeps_it(open_one: Callable[..., Session]) -> None:
    session = open_one()
    kept, _ = reply(session, "", "Keep this chat")
    temporary = session.new_chat(temporary=True)
    session.open_chat(temporary)
    reply(session, temporary, "Forget this chat")
    left = session.open_chat(kept)
    assert left.conversations is not None and [c.id for c in left.conversations] == [kept]
    assert left.conversation is not None and left.conversation.id == kept


def test_learning_waits_until_the_user_has_paused_and_never_while_a_reply_waits(
        open_one: Callable[..., Session], monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    session = open_one()
    session._clock = lambda: now[0]
    assert session.learning_wait() is None  # nothing to learn yet
    chat, _ = reply(session, "", "I moved to Porto last year.")
    now[0] += 5
    assert session.learning_wait() == pytest.approx(10.0)
    now[0] += 10
    assert session.learning_wait() == 0.0
    session.send(chat, "Another question")
    assert session.learn_step() == [] and session.learning_pending


def _drain(session: Session) -> list[tuple[object, Event]]:
    events: list[tuple[object, Event]] = []
    while session.turns.busy():
        events += session.step(0.01).events
    return events


def test_imported_chats_are_listed_at_once_and_exported_again_whole(open_one: Callable[..., Session],
                                                                    tmp_path: Path) -> None:
    session = open_one()
    chat, _ = reply(session, "", "What is the capital of France?")
    document = session.profile.export_everything()
    session.delete_chat(chat, forget_what_was_learned=True)
    (tmp_path / "backup.json").write_text(json.dumps(document), encoding="utf-8")
    report, refresh = session.import_chats("cleo", tmp_path / "backup.json")
    assert report.conversations_added == 1 and refresh.conversations is not None
    assert [c.id for c in refresh.conversations] == [chat]
    assert "Written by first." in str(session.profile.export_chat(chat))


def test_the_model_a_session_was_opened_with_writes_every_chat_without_its_own(models: tuple[Path, Path]) -> None:
    """`cleo chat --model PATH`: the model given at open is the default, not the settings'."""
    loader = Loader()
    session = open_session(SETTINGS.updated(chat_model=str(models[0])), model_path=models[1], load_model=loader)
    try:
        _, events = reply(session, "", "Hello")
        assert "".join(e.text for e in events if isinstance(e, Token)) == "Written by second."
        assert [p.name for p in loader.loaded] == ["second.gguf"]
    finally:
        session.close()


def test_a_model_chosen_for_every_chat_stays_chosen_and_is_saved_once_it_loaded(
        open_one: Callable[..., Session], models: tuple[Path, Path]) -> None:
    loader = Loader()
    session = open_one(loader=loader)
    refresh = session.use_model(str(models[1]))
    assert refresh.model is not None and refresh.model.name == "second"
    _, events = reply(session, "", "Hello")
    assert "".join(e.text for e in events if isinstance(e, Token)) == "Written by second."
    assert load_settings()[0].chat_model == str(models[1])
    session.close()
    damaged = write_tiny_gguf(models[0].with_name("damaged.gguf"))
    broken = open_one(loader=Loader(fail_on="damaged.gguf"))
    with pytest.raises(ModelFileInvalid):
        broken.use_model(str(damaged))
    assert load_settings()[0].chat_model == str(models[1])  # unchanged by the choice that failed to load


def test_a_chat_is_renamed_pinned_and_archived_in_the_sidebar(open_one: Callable[..., Session]) -> None:
    session = open_one()
    chat, _ = reply(session, "", "Hello")
    session.rename_chat(chat, "Greetings")
    session.pin_chat(chat)
    refresh = session.archive_chat(chat)
    assert refresh.conversations is not None
    [shown] = refresh.conversations
    assert (shown.title, shown.pinned, shown.archived) == ("Greetings", True, True)


def _request(words: int) -> Callable[[ChatModel, threading.Event], Turn]:
    """An API-like request: a reply of `words` words written beside the chat's."""
    def work(model: ChatModel, stop: threading.Event) -> Turn:
        prompt = model.tokenize("hello")
        yield from (Token(text) for text in model.stream(prompt, Sampling(max_tokens=words), stop, alongside=True))
        yield Done("", "stop")
    return work


def _order(session: Session, tickets: list[TurnTicket]) -> list[tuple[int, str]]:
    """(ticket index, event type) in the order the session wrote them."""
    written: list[tuple[int, str]] = []
    while session.turns.busy():
        written += [(tickets.index(t), type(e).__name__) for t, e in session.step(0.0).events]
    return written


def test_requests_and_the_chat_are_written_side_by_side_when_the_model_has_sequences(
        open_one: Callable[..., Session]) -> None:
    session = open_one(SETTINGS.updated(api_enabled=True, api_parallel=2))
    assert session.assistant.model.parallel == 2
    tickets = [session.submit_request("api", "", _request(30)) for _ in range(3)]
    tickets.append(session.send("", "Hello"))
    order = _order(session, tickets)
    first_token = {i: order.index((i, "Token")) for i in range(4)}
    done = {i: order.index((i, "Done")) for i in range(4)}
    # two requests (the model's sequences) and the chat at once; the third request waits for room
    assert max(first_token[0], first_token[1], first_token[3]) < min(done[0], done[1], done[3])
    assert first_token[2] > min(done[0], done[1])
    assert "".join(e.text for e in session.run(session.send(tickets[3].conversation_id, "Again"))
                   if isinstance(e, Token)) == "Written by first."


def test_a_turn_for_another_model_waits_for_the_others(
        open_one: Callable[..., Session], models: tuple[Path, Path]) -> None:
    session = open_one(SETTINGS.updated(api_enabled=True, api_parallel=2))
    elsewhere = session.new_chat()
    session.use_model_in_chat(elsewhere, str(models[1]))  # loads it now
    tickets = [session.submit_request("api", "", _request(5), model_path=models[0]), session.send(elsewhere, "Hello")]
    order = _order(session, tickets)
    assert order.index((1, "Started")) > order.index((0, "Done"))  # it loads its model when the request ended


def test_without_the_api_requests_are_written_one_after_the_other(open_one: Callable[..., Session]) -> None:
    alone = open_one(SETTINGS)  # the API is off: the model has no sequences for requests
    assert alone.assistant.model.parallel == 0
    tickets = [alone.submit_request("api", "", _request(5)), alone.submit_request("api", "", _request(5))]
    order = _order(alone, tickets)
    assert order.index((1, "Token")) > order.index((0, "Done"))
