"""The local API from the window: turned on and off in Settings, serving other apps from the window's own
model while the window is open, its token copied and renewed, and a port in use told without harm.
Real window offscreen, real default model, real HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PySide6.QtGui import QGuiApplication
from pytestqt.qtbot import QtBot

from app.main_window import MainWindow
from app.settings_dialog import SettingsDialog
from tests.helpers.gui import FAST, OpenWindow, free_port, idle, in_settings, rows, send


def _get(port: int, path: str, token: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/v1{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _copy_token(qtbot: QtBot, window: MainWindow, monkeypatch: pytest.MonkeyPatch, *, renew: bool = False) -> str:
    """Settings → Local API → Copy token (or Make a new token…, confirmed); what the clipboard then holds."""
    clipboard = QGuiApplication.clipboard()
    clipboard.setText("")
    notes: list[str] = []

    def use(dialog: SettingsDialog) -> bool:
        (dialog.new_token_button if renew else dialog.copy_token_button).click()
        qtbot.waitUntil(lambda: dialog.token_note.isVisibleTo(dialog), timeout=10_000)
        notes.append(dialog.token_note.text())
        return False  # Cancel: the token is no setting, it changed already

    in_settings(window, monkeypatch, use)
    assert ("new token" if renew else "copied") in notes[0]
    return clipboard.text()


def _api_settings(port: int, *, on: bool) -> Any:
    def use(dialog: SettingsDialog) -> bool:
        dialog.editors["api_enabled"].setChecked(on)  # type: ignore[attr-defined]
        dialog.editors["api_port"].setValue(port)  # type: ignore[attr-defined]
        return True
    return use


def test_turned_on_in_settings_the_api_answers_other_apps_from_the_window_model_and_off_it_is_gone(
        qtbot: QtBot, open_window: OpenWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    window = open_window()
    assert not window.status_line.api_label.isVisibleTo(window)
    port = free_port()
    token = _copy_token(qtbot, window, monkeypatch)  # copied before it was ever on: the one it will use

    in_settings(window, monkeypatch, _api_settings(port, on=True))
    label = window.status_line.api_label
    qtbot.waitUntil(lambda: label.isVisibleTo(window), timeout=10_000)
    assert label.text() == f"API on 127.0.0.1:{port}" and window.settings.api_enabled

    listed = _get(port, "/models", token)
    assert listed.status_code == 200
    first = listed.json()["data"][0]["id"]
    assert window.model_state is not None and first == Path(window.model_state.path).stem  # the window's model
    answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120,
                        headers={"Authorization": f"Bearer {token}"},
                        json={"model": first, "max_tokens": 8, "temperature": 0,
                              "messages": [{"role": "user", "content": "Name a colour."}]})
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert reply["choices"][0]["message"]["content"].strip() and reply["usage"]["completion_tokens"] > 0
    assert _get(port, "/models", "not-the-token").status_code == 401

    send(qtbot, window, "Hello")  # the window chats on, from the same model
    assert rows("SELECT count(*) FROM messages WHERE role = 'assistant'") == [(1,)]  # API requests are no chats

    in_settings(window, monkeypatch, _api_settings(port, on=False))
    qtbot.waitUntil(lambda: not label.isVisibleTo(window), timeout=10_000)
    with pytest.raises(httpx.ConnectError):
        _get(port, "/models", token)


def test_a_new_token_replaces_the_old_at_once_and_closing_the_window_stops_the_api(
        qtbot: QtBot, open_window: OpenWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    window = open_window(FAST.updated(api_enabled=True, api_port=port))
    label = window.status_line.api_label
    qtbot.waitUntil(lambda: label.isVisibleTo(window), timeout=10_000)  # on from the start
    assert label.text() == f"API on 127.0.0.1:{port}"

    old = _copy_token(qtbot, window, monkeypatch)
    assert len(old) >= 22 and _get(port, "/models", old).status_code == 200  # ≥ 128 bits, as URL-safe text

    new = _copy_token(qtbot, window, monkeypatch, renew=True)  # the fixture's message boxes answer OK
    assert new and new != old
    assert _get(port, "/models", old).status_code == 401
    assert _get(port, "/models", new).status_code == 200

    window.close()
    with pytest.raises(httpx.ConnectError):
        _get(port, "/models", new)


def test_a_port_in_use_is_told_and_cleo_keeps_chatting_and_serves_once_the_port_is_changed(
        qtbot: QtBot, open_window: OpenWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        taken = other_program.getsockname()[1]
        window = open_window(FAST.updated(api_enabled=True, api_port=taken))
        qtbot.waitUntil(lambda: any(f"port {taken}" in said for said in window.errors), timeout=10_000)  # type: ignore[attr-defined]
        assert not window.status_line.api_label.isVisibleTo(window)

        send(qtbot, window, "Still there?")
        idle(qtbot, window)
        assert rows("SELECT count(*) FROM messages WHERE role = 'assistant'") == [(1,)]

        port = free_port()
        in_settings(window, monkeypatch, _api_settings(port, on=True))
        qtbot.waitUntil(lambda: window.status_line.api_label.text() == f"API on 127.0.0.1:{port}", timeout=10_000)
        token = _copy_token(qtbot, window, monkeypatch)
        assert _get(port, "/models", token).status_code == 200


def test_closing_the_window_mid_request_ends_that_request_at_once(
        qtbot: QtBot, open_window: OpenWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    window = open_window(FAST.updated(api_enabled=True, api_port=port))
    token = _copy_token(qtbot, window, monkeypatch)
    first_piece, ended = threading.Event(), threading.Event()
    received: list[str] = []

    def client() -> None:
        body = {"model": "cleo", "max_tokens": 600, "temperature": 0, "stream": True,
                "messages": [{"role": "user", "content": "Tell me a very long story about the sea."}]}
        try:
            with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {token}"}) as answer:
                for line in answer.iter_lines():
                    received.append(line)
                    if '"content"' in line:
                        first_piece.set()
        except httpx.HTTPError as exc:  # a connection cut is an end the client notices too
            received.append(repr(exc))
        finally:
            ended.set()

    threading.Thread(target=client, daemon=True).start()
    qtbot.waitUntil(first_piece.is_set, timeout=60_000)
    started = time.monotonic()
    window.close()
    closed_in = time.monotonic() - started
    assert ended.wait(10)
    assert closed_in < 2.5, f"closing waited {closed_in:.1f} s for the request"  # not the server's 3 s grace
    with pytest.raises(httpx.ConnectError):
        _get(port, "/models", token)
