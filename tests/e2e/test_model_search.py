"""`cleo models search|files|download` as a user runs them, against a fake Hub on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.cli.main import EXIT_KNOWN_ERROR, main
from engine.paths import folders
from tests.helpers.fake_hub import MOE_REPO, SPLIT_NAME, FakeHub, hub_with_models


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    fake = hub_with_models(tmp_path_factory.mktemp("hub"))
    fake.add_repo("evil/Name-\x1b]52;c;aGk=\x07-GGUF", {"x.gguf": b"GGUF"}, downloads=1)
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def use_the_fake(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CLEO_HUB_URL", hub.url)
    monkeypatch.setenv("CLEO_CONTEXT_SIZE", "4096")
    yield
    hub.faults.api_status, hub.faults.html = 0, False


def cleo(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_search_prints_repositories_with_downloads_likes_update_and_licence(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cleo(capsys, "models", "search", "model")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "someone/Model-0-GGUF"
    assert lines[1] == "  900 downloads, 0 likes, updated 2024-01-05, licence mit"
    status, out, _ = cleo(capsys, "models", "search", "model", "--sort", "recent", "--json")
    assert json.loads(out)["models"][0]["repo"] == "someone/Model-1-GGUF"


def test_text_from_the_hub_cannot_drive_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    for extra, shown in (((), "\\x1b]52"), (("--json",), "\\u001b]52")):
        status, out, _ = cleo(capsys, "models", "search", "evil", *extra)
        assert status == 0
        assert "\x1b" not in out and "\x07" not in out
        assert shown in out  # shown, not obeyed


def test_files_lists_models_with_header_facts_and_fit(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cleo(capsys, "models", "files", MOE_REPO, "--header", "tiny-moe-F32.gguf", "--headers", "1")
    assert status == 0, err
    moe = out.split("\ntiny-moe-F32.gguf\n")[1].split("\n\n")[0]
    assert "qwen3moe, MoE, 8 experts, 2 active per token" in moe
    assert "context 32768 tokens, chat template" in moe
    assert any(verdict in moe for verdict in ("fits on the GPU", "fits in RAM only", "fits partly", "too large"))
    assert "with a 4096-token context" in moe
    assert f"{SPLIT_NAME}\n  Q8_0, " in out and "3 parts" in out
    assert "mmproj-tiny-F16.gguf  [vision projector, not a chat model]" in out
    assert "README.md  [not a model]" in out
    assert "Headers not read for 1 more model file(s)" in out
    status, out, _ = cleo(capsys, "models", "files", MOE_REPO, "--headers", "0", "--json")
    listed = json.loads(out)
    assert len(listed["commit"]) == 40 and not any("header" in f for f in listed["files"])


def test_download_shows_progress_saves_the_model_and_lists_it(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cleo(capsys, "models", "download", MOE_REPO, "tiny-moe-F32.gguf")
    assert status == 0, err
    saved = folders().models / "tiny-moe-F32.gguf"
    assert f"Saved {saved}" in out and "MoE, 8 experts" in out
    assert "100% " in err and "GB" in err
    status, out, _ = cleo(capsys, "models", "list", "--json")
    assert str(saved) in [m["path"] for m in json.loads(out)["models"]]


def test_download_to_a_chosen_folder_fetches_every_part(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = cleo(capsys, "models", "download", MOE_REPO, SPLIT_NAME, "--folder", str(tmp_path))
    assert status == 0, err
    assert len(list(tmp_path.glob("split-model-Q8_0-*-of-00003.gguf"))) == 3


@pytest.mark.parametrize(("fault", "said"), [("api_status", "429 Too Many Requests"), ("html", "a web page")])
def test_hub_trouble_is_one_line_and_no_traceback(hub: FakeHub, capsys: pytest.CaptureFixture[str], fault: str,
                                                  said: str) -> None:
    setattr(hub.faults, fault, 429 if fault == "api_status" else True)
    status, out, err = cleo(capsys, "models", "search", "qwen")
    assert status == EXIT_KNOWN_ERROR
    assert err.startswith("cleo: Hugging Face cannot be reached: ") and said in err.splitlines()[0]
    assert "Traceback" not in err and out == ""


def test_offline_is_one_line_and_the_catalog_still_works(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("CLEO_HUB_URL", f"http://127.0.0.1:{closed.getsockname()[1]}")
    for args in (("search", "qwen"), ("files", MOE_REPO), ("download", MOE_REPO, "tiny-F32.gguf")):
        status, _, err = cleo(capsys, "models", *args)
        assert status == EXIT_KNOWN_ERROR and err.startswith("cleo: Hugging Face cannot be reached: ")
        assert "Traceback" not in err
    assert cleo(capsys, "models", "list")[0] == 0


def test_search_without_a_query_shows_cleos_suggestions(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cleo(capsys, "models", "search")
    assert status == 0
    assert "Qwen/Qwen3-30B-A3B-GGUF  Qwen3-30B-A3B-Q4_K_M.gguf" in out
    assert out.index("MoE") < out.index("dense")
