"""The `cleo` command, run as a user runs it: a real process on the real default model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.models import DefaultModels, write_tiny_gguf

REPOSITORY = Path(__file__).resolve().parents[2]
# What a hostile reply or file tries: write the clipboard (OSC 52), retitle the window (OSC 0),
# clear the screen with an 8-bit CSI, and reverse the reading order of what follows.
CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e")
HOSTILE = "Sure \x1b]52;c;ZXZpbA==\x07 done \x1b]0;pwned\x07 then \x9b2J and \u202eevil"
SHOWN = "Sure \\x1b]52;c;ZXZpbA==\\x07 done \\x1b]0;pwned\\x07 then \\x9b2J and \\u202eevil"


def _cleo(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "CLEO_HOME": str(home), "CLEO_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "app", *args], env=full_env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_chat_once_answers_and_keeps_llama_logs_out_of_the_terminal(default_models: DefaultModels) -> None:
    result = _cleo("chat", "--once", "What is the capital of France?", home=default_models.home,
                   CLEO_TEMPERATURE="0")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "llama_context" not in result.stderr
    log_text = (default_models.home / "logs" / "cleo.log").read_text(encoding="utf-8")
    assert "llama_context" in log_text


def test_missing_model_is_explained_without_a_traceback(cleo_home: Path) -> None:
    result = _cleo("chat", "--once", "hello", home=cleo_home)
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "python -m training.defaults" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_settings_warn_and_chat_still_works(default_models: DefaultModels, cleo_home: Path) -> None:
    default_models.copy_home_to(cleo_home)
    (cleo_home / "config").mkdir()
    (cleo_home / "config" / "settings.json").write_text("{not json")
    result = _cleo("chat", "--once", "What is the capital of France?", home=cleo_home, CLEO_TEMPERATURE="0")
    assert result.returncode == 0, result.stderr
    assert "settings.json.bad" in result.stderr
    assert "Paris" in result.stdout


def test_bad_setting_in_the_environment_is_explained(cleo_home: Path) -> None:
    result = _cleo("chat", "--once", "hi", home=cleo_home, CLEO_CONTEXT_SIZE="lots")
    assert result.returncode == 2
    assert "CLEO_CONTEXT_SIZE" in result.stderr
    assert "Traceback" not in result.stderr


def test_models_list_shows_the_default_moe_without_loading_it(default_models: DefaultModels, cleo_home: Path) -> None:
    default_models.copy_home_to(cleo_home)
    shutil.rmtree(cleo_home / "logs", ignore_errors=True)
    result = _cleo("models", "list", "--json", home=cleo_home)
    assert result.returncode == 0, result.stderr
    listed = {Path(m["path"]).name: m for m in json.loads(result.stdout)["models"]}
    moe = listed["cleo-moe-4x135m-q4_1.gguf"]
    assert (moe["is_moe"], moe["experts"], moe["experts_used"]) == (True, 4, 2)
    assert listed["all-minilm-l6-v2-f16.gguf"]["is_embedding_model"]
    assert "llama" not in (cleo_home / "logs" / "cleo.log").read_text(encoding="utf-8")  # llama.cpp never ran


def test_models_info_on_a_non_model_explains_the_problem(tmp_path: Path, cleo_home: Path) -> None:
    notes = tmp_path / "notes.gguf"
    notes.write_text("shopping list")
    result = _cleo("models", "info", str(notes), home=cleo_home)
    assert result.returncode == 2
    assert str(notes) in result.stderr and "not a GGUF model" in result.stderr
    assert "Traceback" not in result.stderr


def test_output_to_a_pipe_is_utf8_whatever_the_code_page(tmp_path: Path, cleo_home: Path) -> None:
    # A Windows pipe defaults to cp1252, which has no emoji: printing one used to end the command.
    model = write_tiny_gguf(tmp_path / "sushi 🍣.gguf")
    result = _cleo("models", "info", str(model), home=cleo_home, PYTHONIOENCODING="cp1252")
    assert result.returncode == 0, result.stderr
    assert str(model) in result.stdout


def test_chat_once_json_gives_reply_usage_and_notices(default_models: DefaultModels) -> None:
    result = _cleo("chat", "--once", "What is the capital of France?", "--json", home=default_models.home,
                   CLEO_TEMPERATURE="0")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert "Paris" in answer["reply"] and answer["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] > 0 and answer["usage"]["context_size"] == 4096
    assert answer["notices"] == [] and answer["error"] is None and answer["device"] == "CPU"


def _read_until(chat: subprocess.Popen[str], marker: str, times: int, seen: str = "") -> str:
    """Read the chat's output until `marker` has appeared `times` more times; fail if it ends first."""
    assert chat.stdout is not None
    target = seen.count(marker) + times
    while seen.count(marker) < target:
        char = chat.stdout.read(1)
        if not char:
            pytest.fail(f"cleo chat ended (exit {chat.wait()}) after printing {seen!r}")
        seen += char
    return seen


@pytest.mark.skipif(sys.platform == "win32", reason="a console's Ctrl+C cannot be sent to one child process")
def test_ctrl_c_stops_the_reply_but_not_the_chat(default_models: DefaultModels) -> None:
    # Greedy: a sampled reply to the second question can wander back into the stopped story.
    env = {**os.environ, "CLEO_HOME": str(default_models.home), "CLEO_THREADS": "1", "CLEO_MAX_TOKENS": "2000",
           "CLEO_TEMPERATURE": "0", "PYTHONUNBUFFERED": "1"}
    chat = subprocess.Popen([sys.executable, "-m", "app", "chat"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert chat.stdin is not None and chat.stdout is not None
    try:
        chat.stdin.write("Write a very long story about a lighthouse keeper.\n")
        chat.stdin.flush()
        _read_until(chat, "you> ", 1)
        chat.stdout.read(30)  # the reply is streaming
        chat.send_signal(signal.SIGINT)
        out, err = chat.communicate("What is the capital of France?\n", timeout=120)
    finally:
        chat.kill()
    assert chat.returncode == 0, err
    assert "[stopped]" in out
    assert "Paris" in out.split("[stopped]", 1)[1]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def _waiting_to_learn_from(home: Path) -> list[str]:
    """The user messages of the turns memory has still to learn from, read as another program would."""
    with sqlite3.connect(f"file:{home / 'data' / 'cleo.db'}?mode=ro", uri=True) as conn:
        queued = [json.loads(ids) for (ids,) in conn.execute("SELECT message_ids FROM learning_queue")]
        return [content for ids in queued for (content,) in
                conn.execute(f"SELECT content FROM messages WHERE role = 'user' AND id IN "
                             f"({','.join('?' * len(ids))})", ids)]


@pytest.mark.skipif(sys.platform == "win32", reason="a Windows pipe cannot tell that a line waits: Cleo learns first")
def test_the_next_message_is_answered_before_learning_and_learning_goes_on_while_idle(
        default_models: DefaultModels, cleo_home: Path) -> None:
    default_models.copy_home_to(cleo_home)
    env = {**os.environ, "CLEO_HOME": str(cleo_home), "CLEO_THREADS": "1", "CLEO_TEMPERATURE": "0",
           "CLEO_MAX_TOKENS": "200", "PYTHONUNBUFFERED": "1"}
    chat = subprocess.Popen([sys.executable, "-m", "app", "chat"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert chat.stdin is not None and chat.stdout is not None
    first = "I am Ada, a marine biologist in Lisbon, and I go sailing every weekend."
    try:
        # The second message is typed while the first reply streams, as a quick typist would.
        chat.stdin.write(f"{first}\nWrite a long poem about the sea.\n")
        chat.stdin.flush()
        seen = _read_until(chat, "you> ", 2)
        chat.stdout.read(5)  # the second reply is streaming
        assert _waiting_to_learn_from(cleo_home) == [first]  # it did not wait for learning
        _read_until(chat, "you> ", 1, seen)
        for _ in range(600):  # now Cleo waits for the user, and learns meanwhile
            if not _waiting_to_learn_from(cleo_home):
                break
            time.sleep(0.5)
        assert not _waiting_to_learn_from(cleo_home)
        assert chat.poll() is None
        _out, err = chat.communicate("/quit\n", timeout=300)
    finally:
        chat.kill()
    assert chat.returncode == 0, err
    assert "Traceback" not in err


def _obeys_nothing(output: str) -> bool:
    return not any(control in output for control in CONTROLS)


# `cleo` itself, with the scripted model at the Session's model-loading seam instead of llama.cpp.
_SCRIPTED_CLEO = """
import sys
from engine.cli import main as cli
from engine.session import open_session
from tests.helpers.scripted_model import ScriptedChatModel

def scripted(settings, *, model_path=None):
    return open_session(settings, model_path=model_path,
                        load_model=lambda path, _settings: ScriptedChatModel([sys.argv[1]], path=path))

cli.open_session = scripted
sys.exit(cli.main(sys.argv[2:]))
"""


def _scripted_cleo(reply: str, *args: str, home: Path, typed: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLEO_HOME": str(home), "CLEO_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", _SCRIPTED_CLEO, reply, *args], env=env, cwd=REPOSITORY,
                          input=typed, capture_output=True, text=True, timeout=300, check=False)


def test_a_reply_cannot_send_the_terminal_control_sequences(cleo_home: Path, tmp_path: Path) -> None:
    model = tmp_path / "scripted.gguf"
    shown = _scripted_cleo(HOSTILE, "chat", "--once", "hello", "--model", str(model), home=cleo_home)
    assert shown.returncode == 0, shown.stderr
    assert _obeys_nothing(shown.stdout + shown.stderr) and SHOWN in shown.stdout

    as_json = _scripted_cleo(HOSTILE, "chat", "--once", "hello", "--json", "--model", str(model), home=cleo_home)
    assert as_json.returncode == 0, as_json.stderr
    assert _obeys_nothing(as_json.stdout) and json.loads(as_json.stdout)["reply"] == HOSTILE  # escaped, not lost


@pytest.mark.skipif(sys.platform == "win32", reason="Windows file names cannot hold control characters")
def test_a_model_name_cannot_retitle_the_terminal(cleo_home: Path, tmp_path: Path) -> None:
    model = tmp_path / "\x1b]0;pwned\x07.gguf"  # the scripted model is named after its file
    chat = _scripted_cleo("Hello there.", "chat", "--model", str(model), home=cleo_home, typed="hi\n/quit\n")
    assert chat.returncode == 0, chat.stderr
    assert "Chatting with \\x1b]0;pwned\\x07" in chat.stdout and _obeys_nothing(chat.stdout + chat.stderr)


def _hostile_gguf(path: Path, name: str, arch: str = "llama") -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch=arch)
    writer.add_name(name)
    writer.add_tensor("token_embd.weight", np.ones((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_model_metadata_is_shown_not_obeyed(cleo_home: Path) -> None:
    models = cleo_home / "data" / "models"
    models.mkdir(parents=True)
    named = _hostile_gguf(models / "named.gguf", HOSTILE)
    _hostile_gguf(models / "alien.gguf", "Alien", arch="\x1b]52;c;ZXZpbA==\x07")
    info = _cleo("models", "info", str(named), home=cleo_home)
    assert info.returncode == 0, info.stderr
    assert _obeys_nothing(info.stdout) and SHOWN in info.stdout
    listed = _cleo("models", "list", home=cleo_home)
    assert listed.returncode == 0, listed.stderr
    assert _obeys_nothing(listed.stdout) and SHOWN in listed.stdout
    assert "'\\x1b]52;c;ZXZpbA==\\x07' model" in listed.stdout  # the unusable file's problem quotes it
    refused = _cleo("models", "info", str(models / "alien.gguf"), home=cleo_home)
    assert refused.returncode == 2 and _obeys_nothing(refused.stderr) and "\\x1b]52" in refused.stderr
