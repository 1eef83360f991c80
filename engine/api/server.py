"""`LocalApi`: Cleo's OpenAI-compatible server on this computer, for `cleo serve` and the window.

Usage, from the thread that owns the Session (the window's worker, or `cleo serve`'s main thread):

    api = LocalApi(session, settings)   # session may be None (no model loaded: requests get 503)
    api.start()                         # binds the port and serves on a thread of its own
    api.url, api.token, token_file()    # what to show the user
    api.session = other_session         # when the Session is opened, closed or replaced (None: 503)
    api.update_settings(settings)       # origins, hosts, limits, memory: from the next request
    api.renew_token()                   # a new token; the old one stops working at once
    api.stop()                          # stops its requests' turns and the server

The server never touches the model: each request is a turn in the Session's queue
(`Session.submit_request`), which that thread writes as it writes the window's turns. Whoever owns
the Session keeps pumping the queue (`Session.serve`, or the window's worker on `on_submitted`).
A port or network change takes a `stop()` and a `start()`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import uvicorn

from engine.api.errors import ApiError, no_model
from engine.api.guard import Guard, Policy
from engine.api.routes import build_routes
from engine.api.token import api_token, new_token
from engine.chat.assistant import Turn
from engine.chat.model import ChatModel
from engine.chat.requests import TurnTicket
from engine.errors import Busy, KnownError
from engine.models.catalog import ModelCatalog
from engine.paths import default_embedding_model
from engine.session import Session
from engine.settings import Settings

log = logging.getLogger(__name__)

FRONTEND = "api"  # this frontend's name in the Session's queue
MEMORY_MODEL_ID = "cleo"
_START_TIMEOUT_S = 10.0
_CATALOG_FRESH_S = 5.0  # the model list is read from disk at most this often
_RETRY_AFTER_S = "2"


def model_id(path: Path) -> str:
    return path.stem


class LocalApi:
    EMBEDDING_DIMENSION = 384

    def __init__(self, session: Session | None, settings: Settings, *, port: int | None = None) -> None:
        self.session = session
        self.settings = settings
        self._port = settings.api_port if port is None else port  # 0: any free port (tests)
        self._token = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self._catalog: tuple[float, list[dict[str, Any]], dict[str, Path]] = (0.0, [], {})

    # --- life -------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def token(self) -> str:
        return self._token

    def start(self) -> None:
        """Bind and serve on a thread of its own; a `KnownError` if the port cannot be used."""
        self._token = api_token()
        self._sockets = _bind(self._port, self.settings.api_listen_on_network)
        self._port = self._sockets[0].getsockname()[1]
        if self.settings.api_listen_on_network:
            log.warning("the local API listens on every network interface (port %d): other computers can reach "
                        "it; the token is still required", self._port)
        # Named implementations, not "auto": the app bundle carries exactly these (packaging/cleo.spec).
        config = uvicorn.Config(Guard(build_routes(self), self.policy), http="h11", ws="none", loop="asyncio",
                                lifespan="off", log_config=None,
                                access_log=False, proxy_headers=False, server_header=False,
                                timeout_graceful_shutdown=3)
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=self._sockets)),
                                        name="cleo-local-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            self.stop()
            raise KnownError(f"Cleo's local API could not start on port {self._port}.", hint="See the log for why.")
        log.info("the local API serves %s", self.url)

    def stop(self) -> None:
        """Stop the API's turns (within a token) and the server; the window's turns go on."""
        session = self.session
        if session is not None:
            session.turns.stop(FRONTEND)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        for sock in self._sockets:
            sock.close()
        self._server, self._thread, self._sockets = None, None, []

    def update_settings(self, settings: Settings) -> None:
        self.settings = settings

    def renew_token(self) -> str:
        self._token = new_token()
        return self._token

    def policy(self) -> Policy:
        s = self.settings
        return Policy(self._port, self._token, s.api_hosts(), s.api_origins(), s.api_max_body_bytes)

    # --- what the routes ask --------------------------------------------------------------------------

    def require_session(self) -> Session:
        session = self.session
        if session is None:
            raise no_model()
        return session

    def submit(self, session: Session, work: Callable[[ChatModel, threading.Event], Turn],
               model_path: Path | None, *, generates: bool = True) -> TurnTicket:
        """Queue a request's turn; 429 when the API's share of the queue (or the queue) is full.
        Every successful call is paired with one `release()` when the request is answered."""
        with self._lock:
            if self._in_flight >= self.settings.api_queue_limit:
                raise _queue_full(f"{self._in_flight} requests are already waiting for the model.")
            self._in_flight += 1
        try:
            return session.submit_request(FRONTEND, "", work, model_path=model_path, generates=generates)
        except Busy as exc:
            self.release()
            raise _queue_full(exc.message) from None

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    async def models(self) -> list[dict[str, Any]]:
        listed, _paths = await self._scan()
        return listed

    async def chat_model_for(self, wanted: str) -> tuple[Session, Path | None, bool]:
        """The Session, the model file to load for `wanted` (None: the one loaded), and whether Cleo's
        memory answers (the id `cleo`, when the user allowed it)."""
        session = self.require_session()
        if wanted == MEMORY_MODEL_ID:
            s = session.settings
            return session, None, s.api_memory and s.memory_enabled
        if wanted == model_id(session.assistant.model.path):
            return session, None, False
        _listed, paths = await self._scan()
        path = paths.get(wanted)
        if path is None or path.name == default_embedding_model().name:
            raise self.unknown_model(wanted)
        return session, path, False

    async def embedder_for(self, wanted: str) -> tuple[Session, str]:
        session = self.require_session()
        own = model_id(default_embedding_model())
        if wanted not in (own, MEMORY_MODEL_ID):
            raise ApiError(404, f"The model {wanted!r} does not make embeddings here; use {own!r}.", param="model",
                           code="model_not_found")
        return session, own

    def unknown_model(self, wanted: str) -> ApiError:
        return ApiError(404, f"The model {wanted!r} does not exist in Cleo; GET /v1/models lists the ones it has.",
                        param="model", code="model_not_found")

    async def _scan(self) -> tuple[list[dict[str, Any]], dict[str, Path]]:
        """The models Cleo can load, the loaded one first, then `cleo`; read from disk at most every few seconds."""
        read_at, listed, paths = self._catalog
        if time.monotonic() - read_at > _CATALOG_FRESH_S:
            folders = [Path(p) for p in self.settings.model_folders]
            found, _unusable = await anyio.to_thread.run_sync(lambda: ModelCatalog(folders).scan())
            paths = {}
            for info in found:
                paths.setdefault(model_id(info.path), info.path)
            self._catalog = (time.monotonic(), [], paths)
        session = self.session
        loaded = session.assistant.model.path if session is not None else None
        order = sorted(paths, key=lambda name: paths[name] != loaded)
        if loaded is not None and model_id(loaded) not in paths:
            paths = {model_id(loaded): loaded, **paths}
            order.insert(0, model_id(loaded))
        listed = [_model_entry(name, paths[name]) for name in order]
        if session is not None:
            listed.insert(1, _model_entry(MEMORY_MODEL_ID, loaded))
        return listed, paths


def _model_entry(name: str, path: Path | None) -> dict[str, Any]:
    try:
        created = int(path.stat().st_mtime) if path is not None else 0
    except OSError:
        created = 0
    return {"id": name, "object": "model", "created": created, "owned_by": "cleo"}


def _queue_full(why: str) -> ApiError:
    return ApiError(429, f"{why} Try again shortly.", code="queue_full", headers={"Retry-After": _RETRY_AFTER_S})


def _bind(port: int, network: bool) -> list[socket.socket]:
    """Listening sockets: loopback only (127.0.0.1 and, where the OS has IPv6, ::1), or every interface."""
    first = _listener(socket.AF_INET, "0.0.0.0" if network else "127.0.0.1", port)
    port = first.getsockname()[1]
    sockets = [first]
    if socket.has_ipv6:
        try:
            sockets.append(_listener(socket.AF_INET6, "::" if network else "::1", port))
        except OSError as exc:  # no IPv6 on this machine, or ::1 not configured
            log.info("the local API listens on IPv4 only: %s", exc)
    return sockets


def _listener(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):  # Windows: no other program may bind the same port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:  # POSIX: a restart may reuse the port at once
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if family == socket.AF_INET:
            raise KnownError(f"Cleo's local API cannot listen on port {port} ({exc.strerror or exc}).",
                             hint="Another program may use that port: choose another in Settings → Local API "
                                  "(api_port), or with --port.") from exc
        raise
    return sock
