"""A real local API for tests: a Session on a thread of its own (its owner, as the window's worker
is), serving `LocalApi` on a free port of 127.0.0.1, and clients for it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import openai

from engine.api.server import LocalApi
from engine.session import Session
from engine.settings import Settings


class Served:
    """`with Served(open_session, settings) as served:` ... the server runs until the block ends."""

    def __init__(self, open_session: Callable[[], Session | None], settings: Settings) -> None:
        self._open = open_session
        self.settings = settings
        self.session: Session | None = None
        self.api: LocalApi | None = None
        self._until = threading.Event()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._own, name="session-owner", daemon=True)

    def __enter__(self) -> Served:
        self._thread.start()
        self._ready.wait(120)
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *_exc: object) -> None:
        self._until.set()
        self._thread.join(60)

    def _own(self) -> None:
        try:
            self.session = self._open()
            self.api = LocalApi(self.session, self.settings, port=0)
            self.api.start()
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            if self.session is not None:
                self.session.serve(self._until)
            else:
                self._until.wait()
        finally:
            self.api.stop()
            if self.session is not None:
                self.session.close()

    def on_session_thread(self, action: Callable[[Session], Any]) -> Any:
        """Run `action(session)` on the Session's own thread, as a queued turn, and return what it gave."""
        assert self.session is not None
        result: list[Any] = []

        def work(_model: Any, _stop: threading.Event) -> Any:
            result.append(action(self.session))  # type: ignore[arg-type]
            yield from ()
        ticket = self.session.submit_request("test", "", work, generates=False)
        assert ticket.ended.wait(30)
        return result[0]

    @property
    def port(self) -> int:
        assert self.api is not None
        return self.api.port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        assert self.api is not None
        return self.api.token

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=self.token, max_retries=0, timeout=300)

    def http(self, *, token: str | None = None, **headers: str) -> httpx.Client:
        """A raw client; the right token unless `token` is given ("" for none)."""
        sent = {"Authorization": f"Bearer {self.token if token is None else token}"} if token != "" else {}
        return httpx.Client(base_url=self.base, headers={**sent, **headers}, timeout=300, trust_env=False)
