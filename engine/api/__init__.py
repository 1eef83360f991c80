"""The local API: an OpenAI-compatible HTTP server on this computer over the Session (`LocalApi`).

`server` (LocalApi: sockets, the uvicorn thread), `guard` (Host, Origin, token, body size),
`routes` and `bodies` (the endpoints and their validated requests), `replies` (turn events into
OpenAI's replies and streams), `work` (what runs on the Session's thread), `stops`, `token`,
`errors`, `tool_calls` (tools in and tool calls out).
"""

from __future__ import annotations

from engine.api.server import LocalApi

__all__ = ["LocalApi"]
