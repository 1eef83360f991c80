"""The model catalog: which GGUF models the user has, and what each one is, without loading it.

Cleo's own models folder is always scanned; users may add folders of other apps (LM Studio,
GPT4All) or any folder of `.gguf` files. Each file's header is read and checked by
`engine.models.gguf_header` (which opens regular files only, so a pipe named `x.gguf` cannot
block the scan); a file that fails is listed with its problem instead of its facts, so the
model manager can say what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gguf import MODEL_ARCH_NAMES, LlamaFileType

from engine.errors import KnownError, ModelFileInvalid
from engine.models.gguf_header import GGUFHeader, read_header
from engine.paths import BUNDLED_MODELS, folders

# Architectures the bundled llama.cpp knows, as named in `general.architecture`.
KNOWN_ARCHITECTURES = frozenset(MODEL_ARCH_NAMES.values())
# Encoders used for embeddings, not chat.
_EMBEDDING_ARCHITECTURES = frozenset({"bert", "nomic-bert", "jina-bert-v2", "modern-bert", "neo-bert", "t5encoder"})


@dataclass(frozen=True)
class ModelInfo:
    """What a GGUF file says about the model in it."""

    path: Path
    name: str
    architecture: str
    parameters: int
    context_length: int
    layers: int
    experts: int  # 0 for a dense model
    experts_used: int
    quantization: str
    file_size: int
    chat_template: str  # empty when the model has none
    vocabulary_size: int
    embedding_length: int
    head_count: int
    head_count_kv: int

    @property
    def is_moe(self) -> bool:
        return self.experts > 1

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    @property
    def is_embedding_model(self) -> bool:
        return self.architecture in _EMBEDDING_ARCHITECTURES


@dataclass(frozen=True)
class Unusable:
    """A `.gguf` file that cannot be used, and why in the user's words."""

    path: Path
    problem: str


def read_model_info(path: Path) -> ModelInfo:
    """Read `path`'s header and describe the model; `KnownError` if it cannot be used."""
    header = read_header(path)
    meta = header.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelFileInvalid(f"{path} does not say which architecture its model has (general.architecture).")
    if arch not in KNOWN_ARCHITECTURES:
        raise ModelFileInvalid(
            f"{path} holds a '{arch}' model, an architecture this version of Cleo cannot run.",
            hint="Choose a model of a supported architecture (llama, qwen3moe, mixtral-style llama, ...).",
        )
    if not header.tensors:
        raise ModelFileInvalid(f"{path} holds only a vocabulary, no model weights.", hint="Choose a full model file.")

    def number(key: str) -> int:
        """A size or count from the header; 0 when it is missing or no count at all (text, NaN, infinite, negative)."""
        value = meta.get(f"{arch}.{key}", 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**63:
            return 0  # NaN fails the comparison too
        return int(value)

    return ModelInfo(
        path=path,
        name=str(meta.get("general.name") or path.stem),
        architecture=arch,
        parameters=sum(t.n_elements for t in header.tensors),
        context_length=number("context_length"),
        layers=number("block_count"),
        experts=number("expert_count"),
        experts_used=number("expert_used_count"),
        quantization=_quantization(header),
        file_size=header.file_size,
        chat_template=str(meta.get("tokenizer.chat_template") or ""),
        vocabulary_size=header.array_lengths.get("tokenizer.ggml.tokens", 0),
        embedding_length=number("embedding_length"),
        head_count=number("attention.head_count"),
        head_count_kv=number("attention.head_count_kv") or number("attention.head_count"),
    )


def _quantization(header: GGUFHeader) -> str:
    file_type = header.metadata.get("general.file_type")
    if isinstance(file_type, int):
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    # No (known) file type: name the tensor type that holds most of the bytes.
    by_type: dict[str, int] = {}
    for tensor in header.tensors:
        by_type[tensor.type.name] = by_type.get(tensor.type.name, 0) + tensor.n_bytes
    return max(by_type, key=lambda name: by_type[name])


class ModelCatalog:
    """The models in Cleo's models folder and in the folders and files the user added."""

    def __init__(self, extra_folders: Iterable[Path] = ()) -> None:
        self.folders = [folders().models, *([BUNDLED_MODELS] if BUNDLED_MODELS.is_dir() else []), *extra_folders]

    def scan(self) -> tuple[list[ModelInfo], list[Unusable]]:
        """Every `.gguf` file below the folders: the usable models and the unusable files."""
        models: list[ModelInfo] = []
        unusable: list[Unusable] = []
        seen: set[Path] = set()
        for folder in self.folders:
            found = sorted(folder.rglob("*.gguf")) if folder.is_dir() else [folder] if folder.is_file() else []
            for path in found:
                real = path.resolve()
                if real in seen:
                    continue
                seen.add(real)
                try:
                    models.append(read_model_info(path))
                except KnownError as exc:
                    unusable.append(Unusable(path, exc.message))
        return models, unusable
