"""Downloading from the (fake) Hub through Cleo's hardened downloader: pinned, resumable, checked."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import DownloadFailed, KnownError, ShownError
from engine.models import hub_downloads
from engine.models.catalog import ModelCatalog
from engine.models.downloads import DownloadCancelled
from engine.models.hub import repo_files
from engine.models.hub_downloads import DownloadProgress, DownloadQueue, NotEnoughSpace, QueuedDownload, download_model
from engine.paths import folders
from tests.helpers.fake_hub import MOE_REPO, SPLIT_NAME, FakeHub, hub_with_models

SLOW_REPO = "cleo-test/Slow-GGUF"
SLOW_FILE = bytes(range(256)) * 6 * 1024  # 1.5 MB: 24 reads of 64 KiB


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    fake = hub_with_models(tmp_path_factory.mktemp("hub"))
    fake.add_repo(SLOW_REPO, {"slow-Q4_0.gguf": SLOW_FILE})
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def no_faults(hub: FakeHub) -> Iterator[None]:
    yield
    hub.faults.wrong_sha256.clear()
    hub.faults.longer.clear()
    hub.faults.cut_after, hub.faults.seconds_per_chunk = None, 0.0


def test_a_download_lands_in_the_models_folder_checked_and_is_listed_at_once(hub: FakeHub) -> None:
    listing = repo_files(hub.url, MOE_REPO)
    path = download_model(listing, "tiny-moe-F32.gguf", folders().models)
    assert path == folders().models / "tiny-moe-F32.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == listing.find("tiny-moe-F32.gguf").parts[0].sha256
    models, _ = ModelCatalog().scan()
    assert [m.path for m in models if m.path == path] == [path]
    assert all(f"/resolve/{listing.commit}/" in r for r in hub.resolved[-1:])  # through the Hub's redirect


def test_the_file_downloaded_is_the_one_listed_even_after_the_repository_changed(hub: FakeHub,
                                                                                 tmp_path: Path) -> None:
    hub.add_repo("cleo-test/Changing-GGUF", {"model-Q4_0.gguf": b"GGUF first version" * 100})
    listing = repo_files(hub.url, "cleo-test/Changing-GGUF")
    hub.push("cleo-test/Changing-GGUF", {"model-Q4_0.gguf": b"GGUF second version" * 100})
    path = download_model(listing, "model-Q4_0.gguf", tmp_path)
    assert path.read_bytes() == b"GGUF first version" * 100


def test_an_interrupted_download_resumes_where_it_stopped(hub: FakeHub, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    listing = repo_files(hub.url, SLOW_REPO)
    hub.faults.cut_after = 600_000
    served_before = hub.served
    with pytest.raises(DownloadFailed, match="stopped after"):
        download_model(listing, "slow-Q4_0.gguf", tmp_path)
    part = tmp_path / "slow-Q4_0.gguf.part"
    held = part.stat().st_size
    assert 0 < held <= 600_000 and not (tmp_path / "slow-Q4_0.gguf").exists()
    path = download_model(listing, "slow-Q4_0.gguf", tmp_path)
    assert path.read_bytes() == SLOW_FILE
    assert hub.ranges[-1] == f"bytes={held}-"
    served = hub.served - served_before
    with capsys.disabled():
        print(f"\n[figure] resume: {held} bytes held after the cut, {served} bytes served in all for a "
              f"{len(SLOW_FILE)}-byte file")
    assert served <= len(SLOW_FILE) + 600_000 - held + 64 * 1024  # at most one read lost in the cut


def test_a_split_model_downloads_every_part_and_loads_from_the_first(hub: FakeHub, tmp_path: Path) -> None:
    listing = repo_files(hub.url, MOE_REPO)
    path = download_model(listing, SPLIT_NAME, tmp_path)
    assert path.name == "split-model-Q8_0-00001-of-00003.gguf"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"split-model-Q8_0-0000{n}-of-00003.gguf" for n in (1, 2, 3)]
    models, unusable = ModelCatalog([tmp_path]).scan()
    [model] = [m for m in models if m.path.parent == tmp_path]  # one model, not three files
    assert model.path == path and model.file_size == listing.find(SPLIT_NAME).size
    assert not [u for u in unusable if u.path.parent == tmp_path]


def test_a_wrong_sha256_deletes_the_file(hub: FakeHub, tmp_path: Path) -> None:
    hub.faults.wrong_sha256.add("tiny-F32.gguf")
    listing = repo_files(hub.url, MOE_REPO)
    with pytest.raises(DownloadFailed, match="arrived damaged or different"):
        download_model(listing, "tiny-F32.gguf", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_file_longer_than_announced_is_stopped_and_deleted(hub: FakeHub, tmp_path: Path) -> None:
    hub.faults.longer["tiny-F32.gguf"] = 1000
    listing = repo_files(hub.url, MOE_REPO)
    with pytest.raises(DownloadFailed, match="sent more than"):
        download_model(listing, "tiny-F32.gguf", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_disk_space_is_checked_before_anything_is_fetched(hub: FakeHub, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_downloads, "SPACE_MARGIN", 2**62)  # as if the disk were all but full
    listing = repo_files(hub.url, MOE_REPO)
    served = hub.served
    with pytest.raises(NotEnoughSpace, match="Not enough disk space"):
        download_model(listing, "tiny-moe-F32.gguf", tmp_path / "new folder")
    assert hub.served == served and not (tmp_path / "new folder").exists()


def test_progress_has_speed_and_time_left_and_cancel_keeps_the_part(hub: FakeHub, tmp_path: Path) -> None:
    hub.faults.seconds_per_chunk = 0.05
    listing = repo_files(hub.url, SLOW_REPO)
    seen: list[DownloadProgress] = []
    cancelled = threading.Event()

    def progress(update: DownloadProgress) -> None:
        seen.append(update)
        if update.seconds_left is not None and update.done > len(SLOW_FILE) // 2:
            cancelled.set()

    with pytest.raises(DownloadCancelled):
        download_model(listing, "slow-Q4_0.gguf", tmp_path, progress=progress, cancelled=cancelled)
    measured = [u for u in seen if u.bytes_per_second]
    assert measured and all(u.seconds_left is not None and u.seconds_left > 0 for u in measured)
    assert 100_000 < measured[-1].bytes_per_second < 10_000_000  # 64 KiB per 0.05 s is about 1.3 MB/s
    assert (tmp_path / "slow-Q4_0.gguf.part").stat().st_size >= len(SLOW_FILE) // 2


@pytest.mark.parametrize(("name", "refusal"), [("README.md", "not a model file"),
                                               ("tiny-F32.gguf.missing", "has no file")])
def test_what_is_no_model_is_not_downloaded(hub: FakeHub, tmp_path: Path, name: str, refusal: str) -> None:
    with pytest.raises(KnownError, match=refusal):
        download_model(repo_files(hub.url, MOE_REPO), name, tmp_path)


def test_a_known_file_that_changed_on_the_hub_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("Qwen/Qwen3-30B-A3B-GGUF", {"Qwen3-30B-A3B-Q4_K_M.gguf": b"GGUF not the real one"})
    with pytest.raises(KnownError, match="not the file Cleo knows"):
        download_model(repo_files(hub.url, "Qwen/Qwen3-30B-A3B-GGUF"), "Qwen3-30B-A3B-Q4_K_M.gguf", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_queued_downloads_run_in_turn_and_a_cancelled_one_does_not_start(hub: FakeHub, tmp_path: Path) -> None:
    listing = repo_files(hub.url, MOE_REPO)
    done: list[tuple[str, Path | ShownError]] = []
    finished = threading.Event()

    def on_done(job: QueuedDownload, result: Path | ShownError) -> None:
        done.append((job.name, result))
        if len(done) == 3:
            finished.set()

    queue = DownloadQueue(on_progress=lambda job, update: None, on_done=on_done)
    queue.add(listing, "tiny-F32.gguf", tmp_path)
    queue.add(listing, "tiny-moe-F32.gguf", tmp_path).cancel()
    queue.add(listing, SPLIT_NAME, tmp_path)
    assert finished.wait(60)
    queue.close()
    assert [name for name, _ in done] == ["tiny-F32.gguf", "tiny-moe-F32.gguf", SPLIT_NAME]
    assert done[0][1] == tmp_path / "tiny-F32.gguf"
    assert isinstance(done[1][1], DownloadCancelled)
    assert done[2][1] == tmp_path / "split-model-Q8_0-00001-of-00003.gguf"
