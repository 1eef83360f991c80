"""The local API's bearer token: random, made on first start, kept readable by the user alone.

Every request must carry it (`Authorization: Bearer …`), so a web page or another user on the
machine cannot use Cleo's model without it. `CLEO_API_TOKEN` overrides the file for scripts.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from engine.paths import ensure, folders, write_private_file
from engine.settings import API_TOKEN_VARIABLE

log = logging.getLogger(__name__)

TOKEN_FILE_NAME = "api-token"
_TOKEN_BYTES = 32  # 256 bits, twice the least the token must have
_SHORTEST_OWN_TOKEN = 16


def token_file() -> Path:
    return folders().config / TOKEN_FILE_NAME


def api_token() -> str:
    """The token in force: `CLEO_API_TOKEN` if set, else the stored one, made now if there is none."""
    own = os.environ.get(API_TOKEN_VARIABLE, "").strip()
    if own:
        if len(own) < _SHORTEST_OWN_TOKEN:
            log.warning("%s is shorter than %d characters: anyone who can guess it can use the local API",
                        API_TOKEN_VARIABLE, _SHORTEST_OWN_TOKEN)
        return own
    try:
        stored = token_file().read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        stored = ""
    return stored or new_token()


def new_token() -> str:
    """Make and store a new token; the old one stops working at the server's next check."""
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    ensure(folders().config)
    write_private_file(token_file(), (token + "\n").encode("utf-8"))
    return token


def token_matches(given: str, expected: str) -> bool:
    """In constant time, so the time to refuse a guess says nothing about how close it was."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
