"""The local API's defences, on a real server over a scripted model: what a web page, a rebinding
attack or a stranger on the machine would try, and what an allowed client sees."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.api.token import token_file
from engine.profile import open_profile
from engine.session import Session
from engine.settings import Settings
from tests.engine.api.serving import Served
from tests.helpers.scripted_model import ScriptedChatModel

LISTED = "http://localhost:3000"
CHAT = {"model": "cleo", "messages": [{"role": "user", "content": "hi"}]}


def serve(settings: Settings | None = None) -> Served:
    settings = settings or Settings()
    return Served(lambda: Session(open_profile(embedder_path=Path("none.gguf")), ScriptedChatModel(), settings),
                  settings)


@pytest.fixture
def served(cleo_home: Path) -> Iterator[Served]:
    with serve(Settings(api_allowed_origins=LISTED, api_allowed_hosts="cleo.example",
                        api_max_body_bytes=4096)) as running:
        yield running


def test_every_route_needs_the_token(served: Served) -> None:
    for token in ("", "wrong-" + served.token):
        with served.http(token=token) as client:
            for method, path in (("GET", "/v1/models"), ("GET", "/v1/models/cleo"), ("POST", "/v1/chat/completions"),
                                 ("POST", "/v1/completions"), ("POST", "/v1/embeddings"), ("GET", "/v1/nothing")):
                response = client.request(method, path, json=CHAT)
                assert response.status_code == 401, (method, path)
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["error"]["code"] == "invalid_api_key"
    with served.http() as client:
        assert client.get("/v1/models").status_code == 200


def test_a_foreign_host_is_refused_even_with_the_token(served: Served) -> None:
    with served.http() as client:
        for host in ("evil.example", f"evil.example:{served.port}", "127.0.0.1.evil.example",
                     f"localhost:{served.port + 1}", ""):
            response = client.get("/v1/models", headers={"Host": host})
            assert response.status_code == 403, host
            assert response.json()["error"]["code"] == "host_not_allowed"
        for host in (f"localhost:{served.port}", f"[::1]:{served.port}", "cleo.example", f"cleo.example:{served.port}"):
            assert client.get("/v1/models", headers={"Host": host}).status_code == 200, host


def test_cors_only_for_a_listed_origin_and_never_a_wildcard(served: Served) -> None:
    with served.http() as client:
        foreign = client.post("/v1/chat/completions", json=CHAT, headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403
        assert foreign.json()["error"]["code"] == "origin_not_allowed"
        assert "access-control-allow-origin" not in foreign.headers

        listed = client.post("/v1/chat/completions", json=CHAT, headers={"Origin": LISTED})
        assert listed.status_code == 200
        assert listed.headers["access-control-allow-origin"] == LISTED
        plain = client.get("/v1/models")
        assert "access-control-allow-origin" not in plain.headers

    preflight = {"Origin": LISTED, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    with served.http(token="") as browser:  # a preflight carries no token
        allowed = browser.options("/v1/chat/completions", headers=preflight)
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == LISTED
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        refused = browser.options("/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"})
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers


def test_a_body_over_the_limit_is_refused(served: Served) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    with served.http() as client:
        declared = client.post("/v1/chat/completions", json=big)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "request_too_large"

        def pieces() -> Iterator[bytes]:  # chunked: no Content-Length to trust
            yield b'{"model": "cleo", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}]}'
        chunked = client.post("/v1/chat/completions", content=pieces())
        assert chunked.status_code == 413
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_the_token_is_random_long_and_private(served: Served) -> None:
    stored = token_file().read_text().strip()
    assert stored == served.token
    assert len(stored) >= 22  # 128 bits in URL-safe base64
    if os.name == "posix":
        assert stat.S_IMODE(token_file().stat().st_mode) == 0o600


def test_the_token_stays_across_starts_and_the_variable_overrides_it(cleo_home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with serve() as first:
        token = first.token
    with serve() as second:
        assert second.token == token
    monkeypatch.setenv("CLEO_API_TOKEN", "a-token-the-script-chose-0123456789")
    with serve() as third, third.http(token="a-token-the-script-chose-0123456789") as client:
        assert client.get("/v1/models").status_code == 200
        with third.http(token=token) as old:
            assert old.get("/v1/models").status_code == 401


def test_it_listens_on_loopback_only(served: Served) -> None:
    assert served.api is not None
    addresses = {sock.getsockname()[0] for sock in served.api._sockets}
    assert addresses <= {"127.0.0.1", "::1"}
    assert "127.0.0.1" in addresses
    outward = _outward_address()
    if outward is not None:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{outward}:{served.port}/v1/models", timeout=5, trust_env=False)


def _outward_address() -> str | None:
    """This machine's address on its network, if it has one (no packet is sent)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # a documentation address: connect() on UDP only picks a route
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address
