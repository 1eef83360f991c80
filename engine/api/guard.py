"""What every request passes before it reaches a route: Host, Origin, token and body size.

The order matters. A page in a browser can make the browser send requests to 127.0.0.1 (DNS
rebinding gives it any Host name it likes, and a plain form POST needs no preflight), so the Host
allow-list and the Origin check come first and refuse even a request with the right token; then
the token, compared in constant time; then the body, counted as it arrives so a client cannot make
Cleo hold more than the limit whatever Content-Length says. CORS headers name the caller's origin
only when the user listed it, never `*`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.api.errors import ApiError
from engine.api.token import token_matches

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_PREFLIGHT_MAX_AGE_S = "600"


@dataclass(frozen=True)
class Policy:
    """The rules in force, read afresh for each request so a changed setting applies at once."""

    port: int
    token: str
    hosts: tuple[str, ...]  # configured names beyond LOOPBACK_NAMES
    origins: tuple[str, ...]
    max_body_bytes: int

    def host_allowed(self, host: str) -> bool:
        host = host.lower()
        with_port = {f"{name}:{self.port}" for name in (*LOOPBACK_NAMES, *self.hosts)}
        return host in with_port or host in self.hosts


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than the local API accepts ({limit} bytes; the setting "
                              "api_max_body_bytes).", code="request_too_large")


class Guard:
    """ASGI middleware in front of the routes; `policy()` gives the rules in force."""

    def __init__(self, app: ASGIApp, policy: Callable[[], Policy]) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policy()
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        refusal = _refusal(policy, scope["method"], headers)
        origin = headers.get("origin", "")
        cors = _cors_headers(origin) if origin else {}
        if refusal is not None:
            await refusal.response(cors if refusal.status != 403 else None)(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and origin:
            await _preflight(cors, send)
            return

        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > policy.max_body_bytes:
            await BodyTooLarge(policy.max_body_bytes).response(cors)(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > policy.max_body_bytes:
                    raise BodyTooLarge(policy.max_body_bytes)  # answered by the app's ApiError handler
            return message

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start" and cors:
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((k.encode(), v.encode()) for k, v in cors.items())]}
            await send(message)

        await self.app(scope, counted_receive, send_with_cors)


def _refusal(policy: Policy, method: str, headers: dict[str, str]) -> ApiError | None:
    if not policy.host_allowed(headers.get("host", "")):
        return ApiError(403, "This Host is not allowed to use Cleo's local API. Use http://127.0.0.1:PORT, or add "
                             "the name to the setting api_allowed_hosts.", code="host_not_allowed")
    origin = headers.get("origin", "")
    if origin and origin.lower() not in policy.origins:
        return ApiError(403, f"Web pages from {origin} may not use Cleo's local API. Add the origin to the setting "
                             "api_allowed_origins to allow it.", code="origin_not_allowed")
    if method == "OPTIONS" and origin:
        return None  # a browser's preflight carries no token; the request that follows must
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token_matches(given.strip(), policy.token):
        return ApiError(401, "Cleo's local API needs its token: send `Authorization: Bearer TOKEN` (the token is "
                             "in the file api-token in Cleo's config folder).", code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"})
    return None


def _cors_headers(origin: str) -> dict[str, str]:
    """For an origin the user listed (the others were refused before this)."""
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


async def _preflight(cors: dict[str, str], send: Send) -> None:
    headers = {**cors, "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
               "Access-Control-Allow-Headers": "Authorization, Content-Type",
               "Access-Control-Max-Age": _PREFLIGHT_MAX_AGE_S, "Content-Length": "0"}
    await send({"type": "http.response.start", "status": 204,
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})
    await send({"type": "http.response.body", "body": b""})
