"""Requests a client gets wrong or a server cannot serve yet, queueing, disconnects, models, memory
and chat history, on a real server over a scripted model (what is tested here is the API, not llama.cpp)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from engine.chat.model import ChatModel
from engine.profile import open_profile
from engine.runtime.chat_model import ReplyStats
from engine.runtime.sampling import Sampling
from engine.session import Session
from engine.settings import DEFAULT_SYSTEM_PROMPT, Settings
from tests.engine.api.serving import Served
from tests.helpers.scripted_model import ScriptedChatModel

CHAT = {"model": "cleo", "messages": [{"role": "user", "content": "hi"}]}


class SlowModel(ScriptedChatModel):
    """Writes a long reply at 100 tokens a second and counts what it wrote."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fallback=" ".join(f"w{n}" for n in range(3000)), **kwargs)
        self.written = 0

    def stream(self, prompt: Sequence[int], sampling: Sampling, stop: threading.Event | None = None,
               stats: ReplyStats | None = None, *, special: bool = False, alongside: bool = False
               ) -> Iterator[str]:
        for piece in super().stream(prompt, sampling, stop, stats, special=special, alongside=alongside):
            time.sleep(0.01)
            self.written += 1
            yield piece


def serve(settings: Settings | None = None, model: ChatModel | None = None,
          prepare: Callable[[Session], object] = lambda session: None) -> Served:
    settings = settings or Settings()

    def open_one() -> Session:
        session = Session(open_profile(embedder_path=Path("none.gguf")), model or ScriptedChatModel(), settings)
        prepare(session)
        return session
    return Served(open_one, settings)


@pytest.fixture
def served(cleo_home: Path) -> Iterator[Served]:
    with serve() as running:
        yield running


def test_bad_bodies_get_a_400_naming_the_problem(served: Served) -> None:
    with served.http() as client:
        broken = client.post("/v1/chat/completions", content=b'{"model": "cleo", "messages": [',
                             headers={"Content-Type": "application/json"})
        assert broken.status_code == 400
        assert "not valid JSON" in broken.json()["error"]["message"]
        for body, field in (({"model": "cleo"}, "messages"),
                            ({**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
                            ({**CHAT, "temperature": 9}, "temperature"),
                            ({**CHAT, "n": 2}, "n"),
                            ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
                            ({**CHAT, "response_format": {"type": "xml"}}, "response_format.type")):
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 400, body
            error = response.json()["error"]
            assert error["param"] == field
            assert field in error["message"]
            assert error["type"] == "invalid_request_error"
        assert client.post("/v1/completions", json={"model": "cleo", "prompt": ["a", "b"]}).json()["error"][
            "param"] == "prompt"
        assert client.post("/v1/embeddings", json={"model": "cleo", "input": []}).json()["error"]["param"] == "input"


def test_unknown_models_are_404_and_the_list_starts_with_the_loaded_one(served: Served) -> None:
    client = served.openai()
    ids = [model.id for model in client.models.list()]
    assert ids[:2] == ["scripted", "cleo"]
    assert client.models.retrieve("cleo").id == "cleo"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}]
                                          ).choices[0].message.content == "Noted."


def test_without_a_model_requests_get_503(cleo_home: Path) -> None:
    with Served(lambda: None, Settings()) as served, served.http() as client:
        response = client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "model_not_loaded"
        assert client.post("/v1/embeddings", json={"model": "cleo", "input": "hi"}).status_code == 503
        assert client.get("/v1/models").status_code == 200


def test_a_full_queue_answers_429_with_retry_after(cleo_home: Path) -> None:
    release = threading.Event()
    with serve(Settings(api_queue_limit=1), ScriptedChatModel(release=release)) as served:
        first: list[httpx.Response] = []

        def send_first() -> None:
            with served.http() as client:
                first.append(client.post("/v1/chat/completions", json=CHAT))
        waiting = threading.Thread(target=send_first)
        waiting.start()
        time.sleep(0.5)  # the first request is being written, held by `release`
        with served.http() as client:
            refused = client.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 0
        assert refused.json()["error"]["code"] == "queue_full"
        release.set()
        waiting.join(30)
        assert first[0].status_code == 200
        with served.http() as client:
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_a_client_that_leaves_mid_stream_stops_its_generation(cleo_home: Path) -> None:
    model = SlowModel()
    with serve(model=model) as served:
        with served.http() as client, client.stream("POST", "/v1/chat/completions",
                                                    json={**CHAT, "stream": True, "max_tokens": 3000}) as stream:
            lines = stream.iter_lines()
            received = [line for line, _ in zip(lines, range(6), strict=False) if line.startswith("data:")]
            assert len(received) >= 3
        left_at = model.written
        session = served.session
        assert session is not None
        deadline = time.monotonic() + 5
        while session.turns.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not session.turns.busy()
        assert model.written - left_at < 30  # stopped at once, not after the 3000 tokens asked for
        started = time.monotonic()
        assert served.openai().chat.completions.create(model="cleo", messages=[{"role": "user", "content": "x"}],
                                                       max_tokens=3).choices[0].finish_reason == "length"
        assert time.monotonic() - started < 5


def test_memory_reaches_the_model_only_through_cleo_and_only_when_allowed(cleo_home: Path) -> None:
    def remember(session: Session) -> None:
        session.profile.book.add("The user's dog is called Biscuit.", "profile")

    for allowed in (False, True):
        model = ScriptedChatModel()
        with serve(Settings(api_memory=allowed), model, remember) as served:
            client = served.openai()
            client.chat.completions.create(model="cleo", messages=[{"role": "user", "content": "my dog?"}])
            client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "my dog?"}])
        through_cleo, by_name = model.prompts
        assert ("Biscuit." in through_cleo) is allowed
        assert (DEFAULT_SYSTEM_PROMPT.split()[-1] in through_cleo) is allowed
        assert "Biscuit." not in by_name and "Cleo," not in by_name


def test_requests_are_kept_as_chats_only_when_the_user_asked(cleo_home: Path) -> None:
    for keep in (False, True):
        with serve(Settings(api_save_chats=keep), ScriptedChatModel(["Paris."])) as served:
            served.openai().chat.completions.create(model="cleo", messages=[
                {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}])
            chats = served.on_session_thread(lambda session: session.conversations())
            assert len(chats) == int(keep)
            if keep:
                kept = chats[0].id

                def view_of(session: Session, kept: str = kept) -> Any:
                    return session.view(kept)
                view = served.on_session_thread(view_of)
                assert [(m.role, m.content) for m in view.messages] == [("user", "Capital of France?"),
                                                                        ("assistant", "Paris.")]
                assert view.instructions == "Be brief."
