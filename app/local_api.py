"""The local API while the window is open: started, changed and stopped on the engine's thread.

Other apps on this computer talk to Cleo's model through the engine's `LocalApi`, served from the
window's own Session (one loaded model for both). `LocalApi` must start and stop on the thread
that owns the Session, so the worker keeps an `ApiSwitch` and calls it there; the window only
shows where the API listens and hands its token to the clipboard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the server (uvicorn, starlette) loads when the API is first turned on
    from engine import LocalApi, Session, Settings


def _where(settings: Settings) -> tuple[int, bool]:
    """What the listening sockets depend on: a change takes a stop and a new start."""
    return settings.api_port, settings.api_listen_on_network


class ApiSwitch:
    """The local API as the settings want it; every method runs on the thread that owns the Session."""

    def __init__(self) -> None:
        self._api: LocalApi | None = None

    @property
    def address(self) -> str:
        """Where other apps reach the API ("127.0.0.1:8638"), or "" while it is off."""
        return f"127.0.0.1:{self._api.port}" if self._api is not None else ""

    def follow(self, session: Session | None, settings: Settings) -> None:
        """Serve when `settings` say so: start it, start it again on a new port or network setting,
        pass any other change on, or stop it. `session` None: requests are told no model is loaded.
        A `KnownError` when it cannot start (the port is in use); the API is then off."""
        api = self._api
        if api is not None and (not settings.api_enabled or _where(api.settings) != _where(settings)):
            self.stop()
            api = None
        if not settings.api_enabled:
            return
        if api is None:
            from engine import LocalApi

            api = LocalApi(session, settings)
            api.start()
            self._api = api
        else:
            api.session = session
            api.update_settings(settings)

    def attach(self, session: Session | None) -> None:
        """The Session requests go to from now on (a new one after the model was chosen, or None)."""
        if self._api is not None:
            self._api.session = session

    def token(self, *, renew: bool) -> str:
        """The token apps must send; with `renew`, a new one, and the old one stops working at once."""
        if self._api is not None:
            return self._api.renew_token() if renew else self._api.token
        from engine import api_token, new_token

        return new_token() if renew else api_token()

    def stop(self) -> None:
        """Stop the API's requests and its server; the window's chats go on."""
        api, self._api = self._api, None
        if api is not None:
            api.stop()
