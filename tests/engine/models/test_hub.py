"""Searching the Hub and listing a repository's files, against a fake Hub on 127.0.0.1."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import KnownError
from engine.models.hub import hub_address, repo_files, search, search_next, suggestions
from engine.models.hub_http import HubNotFound, HubUnreachable
from engine.settings import Settings, load_settings
from tests.helpers.fake_hub import MOE_REPO, SPLIT_NAME, FakeHub, hub_with_models


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    fake = hub_with_models(tmp_path_factory.mktemp("hub"))
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def no_faults(hub: FakeHub) -> Iterator[None]:
    yield
    hub.faults.api_status, hub.faults.html = 0, False
    hub.tree_page = 1000


def test_search_finds_gguf_repositories_most_downloaded_first_with_their_details(hub: FakeHub) -> None:
    page = search(hub.url, "gguf")
    assert [m.repo for m in page.models] == ["someone/Model-0-GGUF", "someone/Model-2-GGUF", MOE_REPO,
                                            "someone/Model-1-GGUF"]
    first = page.models[0]
    assert (first.downloads, first.likes, first.licence, first.updated[:10]) == (900, 0, "mit", "2024-01-05")
    assert page.page == 1 and page.next_url == ""
    asked = hub.api_calls[-1]
    assert "filter=gguf" in asked and "expand=lastModified" in asked and "direction=-1" in asked


def test_search_by_recency_puts_the_latest_update_first(hub: FakeHub) -> None:
    page = search(hub.url, "model", sort="recent")
    assert [m.updated[:10] for m in page.models] == ["2025-06-30", "2024-11-11", "2024-01-05"]


def test_search_pages_follow_the_hubs_next_links(hub: FakeHub) -> None:
    first = search(hub.url, "gguf", per_page=3)
    assert len(first.models) == 3 and first.next_url
    second = search_next(first)
    assert second.page == 2 and [m.repo for m in second.models] == ["someone/Model-1-GGUF"]
    assert second.next_url == ""
    assert search(hub.url, "gguf", per_page=3, page=2).models == second.models
    assert search(hub.url, "gguf", per_page=3, page=3).models == ()


def test_files_are_grouped_marked_and_pinned_to_the_listed_commit(hub: FakeHub) -> None:
    listing = repo_files(hub.url, MOE_REPO)
    assert listing.commit == hub.repos[MOE_REPO].commits[-1][0]
    by_name = {f.name: f for f in listing.files}
    split = by_name[SPLIT_NAME]
    assert split.kind == "model" and len(split.parts) == 3 and split.missing_parts == 0
    assert split.quantization == "Q8_0"
    assert split.size == sum(len(hub.blobs[p.sha256]) for p in split.parts)
    assert by_name["mmproj-tiny-F16.gguf"].kind == "mmproj"
    assert by_name["README.md"].kind == "other"
    moe = by_name["tiny-moe-F32.gguf"]
    assert moe.quantization == "F32"
    assert moe.parts[0].sha256 == hashlib.sha256(hub.blobs[moe.parts[0].sha256]).hexdigest()
    assert [f.kind for f in listing.files][:4] == ["model"] * 3 + ["mmproj"]  # models first
    assert f"/resolve/{listing.commit}/" in listing.file_url(moe.parts[0])


def test_a_long_file_list_is_read_page_by_page(hub: FakeHub) -> None:
    whole = repo_files(hub.url, MOE_REPO)
    hub.tree_page = 2
    assert repo_files(hub.url, MOE_REPO) == whole


def test_an_unknown_repository_or_file_is_named(hub: FakeHub) -> None:
    with pytest.raises(HubNotFound, match="no such model"):
        repo_files(hub.url, "nobody/Nothing-GGUF")
    with pytest.raises(KnownError, match=r"no file missing\.gguf") as caught:
        repo_files(hub.url, MOE_REPO).find("missing.gguf")
    assert "tiny-moe-F32.gguf" in caught.value.hint


@pytest.mark.parametrize("name", ["../etc", "a/b/c", "no-owner", "x/y?z=1"])
def test_a_name_that_is_no_repository_is_refused_before_any_request(hub: FakeHub, name: str) -> None:
    before = len(hub.api_calls)
    with pytest.raises(KnownError, match="not a Hugging Face repository name"):
        repo_files(hub.url, name)
    assert len(hub.api_calls) == before


@pytest.mark.parametrize(("fault", "said"), [
    ({"api_status": 429}, "limiting requests"), ({"api_status": 503}, "503"), ({"html": True}, "a web page")])
def test_hub_trouble_is_one_clear_line(hub: FakeHub, fault: dict[str, object], said: str) -> None:
    for name, value in fault.items():
        setattr(hub.faults, name, value)
    for attempt in (lambda: search(hub.url, "gguf"), lambda: repo_files(hub.url, MOE_REPO)):
        with pytest.raises(HubUnreachable) as caught:
            attempt()
        assert caught.value.message.startswith("Hugging Face cannot be reached: ")
        assert said in caught.value.message and "\n" not in caught.value.message
    if fault == {"api_status": 429}:
        assert "30 seconds" in caught.value.hint  # the Hub's Retry-After


def test_no_network_is_one_clear_line() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(HubUnreachable, match=r"^Hugging Face cannot be reached: .*127\.0\.0\.1"):
        search(f"http://127.0.0.1:{port}", "qwen")


def test_plain_http_to_another_computer_is_refused() -> None:
    with pytest.raises(KnownError, match="only downloaded over https"):
        search("http://example.com", "qwen")


def test_the_hub_address_is_a_setting_that_honours_hf_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub_address(Settings()) == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert hub_address(Settings()) == "https://hf-mirror.example"
    assert hub_address(Settings(hub_url="https://mine.example")) == "https://mine.example"
    monkeypatch.setenv("CLEO_HUB_URL", "http://127.0.0.1:9/")
    assert hub_address(load_settings()[0]) == "http://127.0.0.1:9"
    with pytest.raises(ValueError, match="not a web address"):
        Settings(hub_url="file:///etc/passwd")


def test_suggestions_come_by_machine_size_moe_first_with_the_checked_pin(tmp_path: Path) -> None:
    found = suggestions()
    assert [s.memory_gb for s in found] == sorted(s.memory_gb for s in found)
    for size in {s.memory_gb for s in found}:
        kinds = [s.moe for s in found if s.memory_gb == size]
        assert kinds == sorted(kinds, reverse=True)
    qwen = next(s for s in found if s.repo == "Qwen/Qwen3-30B-A3B-GGUF")
    assert (qwen.file, qwen.size) == ("Qwen3-30B-A3B-Q4_K_M.gguf", 18_556_685_824)
    assert qwen.sha256 == "0d003f6662faee786ed5da3e31b29c978de5ae5d275c8794c606a7f3c01aa8f5"
    broken = tmp_path / "catalog.json"
    broken.write_text('{"suggested": [{"repo": "x"}]}')
    with pytest.raises(KnownError, match="suggested models cannot be read"):
        suggestions(broken)
