"""Reading a GGUF header over HTTP Range requests before a download, and the fit estimate from it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from gguf import GGUFReader

from engine.errors import ModelFileInvalid
from engine.models.catalog import read_model_info
from engine.models.fit import Gpu, estimate_need
from engine.models.hub import repo_files
from engine.models.remote_header import FIRST_READ, describe_remote, estimate_fit
from tests.helpers.fake_hub import MOE_REPO, SPLIT_NAME, FakeHub, hub_with_models

GB = 1024**3


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hub-files")


@pytest.fixture(scope="module")
def hub(folder: Path) -> Iterator[FakeHub]:
    fake = hub_with_models(folder)
    yield fake
    fake.close()


@pytest.mark.parametrize("name", ["tiny-moe-F32.gguf", "tiny-F32.gguf"])
def test_the_remote_header_says_what_the_local_file_says(hub: FakeHub, folder: Path, name: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    listing = repo_files(hub.url, MOE_REPO)
    remote = describe_remote(listing, listing.find(name), context_size=4096, memory_free=64 * GB)
    local = read_model_info(folder / name)
    assert replace(remote.info, path=local.path) == local
    size = listing.find(name).size
    with capsys.disabled():
        print(f"\n[figure] remote header of {name} ({size} bytes): {remote.bytes_read} bytes read in "
              f"{remote.requests} request(s)")
    assert remote.bytes_read <= max(size, FIRST_READ)


def test_an_moe_header_shows_experts_context_and_template_from_a_fraction_of_the_file(hub: FakeHub) -> None:
    listing = repo_files(hub.url, MOE_REPO)
    file = listing.find("tiny-moe-F32.gguf")
    remote = describe_remote(listing, file, context_size=4096, memory_free=64 * GB)
    info = remote.info
    assert (info.architecture, info.experts, info.experts_used) == ("qwen3moe", 8, 2)
    assert info.context_length == 32768 and info.has_chat_template and info.quantization == "F32"
    # Its 100,000-token vocabulary makes the header larger than the first read: one more, twice as large.
    assert remote.requests == 2
    assert remote.bytes_read == 3 * FIRST_READ < file.size


def test_reads_grow_until_the_header_is_complete(hub: FakeHub) -> None:
    listing = repo_files(hub.url, MOE_REPO)
    file = listing.find("tiny-moe-F32.gguf")
    small = describe_remote(listing, file, context_size=4096, memory_free=64 * GB, first_read=4096)
    assert small.requests > 5  # 4 KB, 8 KB, 16 KB, …
    assert small.info == describe_remote(listing, file, context_size=4096, memory_free=64 * GB).info


def test_a_split_model_is_described_from_all_its_parts(hub: FakeHub, folder: Path) -> None:
    listing = repo_files(hub.url, MOE_REPO)
    file = listing.find(SPLIT_NAME)
    remote = describe_remote(listing, file, context_size=1024, memory_free=64 * GB)
    parts = sorted((folder / "split").glob("*.gguf"))
    local = read_model_info(parts[0])  # the same files on disk, the other parts found beside the first
    assert replace(remote.info, path=local.path) == local
    assert remote.info.parameters == sum(int(t.n_elements) for p in parts for t in GGUFReader(p).tensors)
    assert remote.info.file_size == file.size == sum(p.stat().st_size for p in parts)
    assert remote.requests == 3


def test_parts_that_do_not_belong_together_are_refused_before_the_download(hub: FakeHub, folder: Path) -> None:
    first, _, third = (p.read_bytes() for p in sorted((folder / "split").glob("*.gguf")))
    names = [f"mixed-Q8_0-{n:05d}-of-00003.gguf" for n in (1, 2, 3)]
    hub.add_repo("cleo-test/Mixed-GGUF", dict(zip(names, [first, third, third], strict=True)))
    listing = repo_files(hub.url, "cleo-test/Mixed-GGUF")
    with pytest.raises(ModelFileInvalid, match=f"{names[1]} should be part 2 of 3 .* it is part 3 of 3"):
        describe_remote(listing, listing.find(names[0]), context_size=1024, memory_free=64 * GB)


def test_a_file_that_is_no_gguf_is_refused_by_the_same_reader(hub: FakeHub) -> None:
    hub.add_repo("cleo-test/Broken-GGUF", {"broken.gguf": b"<html>not a model</html>" * 10})
    listing = repo_files(hub.url, "cleo-test/Broken-GGUF")
    with pytest.raises(ModelFileInvalid, match="does not start with the GGUF signature"):
        describe_remote(listing, listing.find("broken.gguf"), context_size=1024)


def test_the_fit_says_where_the_model_runs_with_numbers(hub: FakeHub) -> None:
    listing = repo_files(hub.url, MOE_REPO)
    info = describe_remote(listing, listing.find("tiny-moe-F32.gguf"), context_size=4096, memory_free=GB).info
    need = estimate_fit(info, 4096, (), 64 * GB).need
    assert estimate_fit(info, 4096, (), 64 * GB).verdict == "fits in RAM only"
    too_large = estimate_fit(info, 4096, (), need // 2)
    assert too_large.verdict == "too large" and "GB" in too_large.text
    on_gpu = estimate_fit(info, 4096, [Gpu("Test GPU", free=need * 2, total=need * 2)], GB)
    assert on_gpu.verdict == "fits on the GPU" and "Test GPU" in on_gpu.text
    parts = estimate_need(info, 4096)  # room for the overhead and three quarters of the rest
    room = parts.overhead + (parts.weights + parts.kv_cache) * 3 // 4
    partly = estimate_fit(info, 4096, [Gpu("Test GPU", free=room, total=need)], 64 * GB)
    assert partly.verdict == "fits partly on the GPU" and 0 < partly.gpu_layers < partly.layers
    assert estimate_fit(info, 4096, (), None).verdict == "unknown"
