"""The model catalog: which GGUF models the user has, and what each one is, without loading it.

Cleo's own models folder is always scanned; users may add folders of other apps (LM Studio,
GPT4All) or any folder of `.gguf` files. Each file's header is read and checked by
`engine.models.gguf_header` (which opens regular files only, so a pipe named `x.gguf` cannot
block the scan); a file that fails is listed with its problem instead of its facts, so the
model manager can say what is wrong with it. A model split into several files is one entry, as
llama.cpp loads it: from its first part, with the parts after it found beside it by name.
`model_info` turns headers into a `ModelInfo` for files on disk and on the Hub alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
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
# A split model (llama.cpp's gguf-split, or a converter's shards): every part says which it is, and
# the first holds the model's metadata; llama.cpp loads it from the first part and finds the
# others beside it by names it writes exactly so. `split.no` counts from 0, file names from 1.
_SPLIT_NO, _SPLIT_COUNT, _SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<part>\d{5})-of-(?P<parts>\d{5})\.gguf$")


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
    """Read `path`'s header and describe the model; `KnownError` if it cannot be used.

    For the first part of a split model the other parts are read too, where llama.cpp looks for
    them (beside it, named by `split_part_name`), and sizes and parameters cover them all."""
    return _read_model(path)[0]


def model_info(first: GGUFHeader, rest: Sequence[GGUFHeader] = ()) -> ModelInfo:
    """The model the header `first` describes: Cleo's one meaning of a GGUF file's facts, for a file
    on disk and for one read on the Hub alike. `rest` are the headers of parts 2..N of a split model,
    in order; the model's size and parameters count every part, and the parts must agree with each
    other as llama.cpp checks when it loads them. `KnownError` if the model cannot be used."""
    path, meta = first.path, first.metadata
    _check_split(first, rest)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelFileInvalid(f"{path} does not say which architecture its model has (general.architecture).",
                               hint="Choose another file; a later part of a split model is loaded through "
                                    "its first part.")
    if arch not in KNOWN_ARCHITECTURES:
        raise ModelFileInvalid(
            f"{path} holds a '{arch}' model, an architecture this version of Cleo cannot run.",
            hint="Choose a model of a supported architecture (llama, qwen3moe, mixtral-style llama, ...).",
        )
    headers = (first, *rest)
    if not any(h.tensors for h in headers):
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
        parameters=sum(t.n_elements for h in headers for t in h.tensors),
        context_length=number("context_length"),
        layers=number("block_count"),
        experts=number("expert_count"),
        experts_used=number("expert_used_count"),
        quantization=_quantization(headers),
        file_size=sum(h.file_size for h in headers),
        chat_template=str(meta.get("tokenizer.chat_template") or ""),
        vocabulary_size=first.array_lengths.get("tokenizer.ggml.tokens", 0),
        embedding_length=number("embedding_length"),
        head_count=number("attention.head_count"),
        head_count_kv=number("attention.head_count_kv") or number("attention.head_count"),
    )


def split_count(header: GGUFHeader) -> int:
    """How many files the model of `header` is split into (`split.count`); 1 when it is not split."""
    count = header.metadata.get(_SPLIT_COUNT)
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 1 else 1


def split_part(name: str) -> tuple[str, int, int] | None:
    """`(prefix, part, parts)` when `name` is a part of a split model as llama.cpp names them
    (`prefix-00002-of-00003.gguf`, parts counted from 1), else None."""
    found = _SPLIT_NAME.match(name)
    return (found["prefix"], int(found["part"]), int(found["parts"])) if found else None


def split_part_name(prefix: str, part: int, parts: int) -> str:
    """The file name of part `part` of `parts` (from 1), the name llama.cpp looks for."""
    return f"{prefix}-{part:05d}-of-{parts:05d}.gguf"


def _read_model(path: Path) -> tuple[ModelInfo, tuple[Path, ...]]:
    """The model loaded from `path`, and every file it is made of (more than one for a split model)."""
    first = read_header(path)
    parts = split_count(first)
    if parts == 1:
        return model_info(first), (path,)
    named = split_part(path.name)
    number = first.metadata.get(_SPLIT_NO)
    if not isinstance(number, int):
        raise ModelFileInvalid(f"{path} says it is one of {parts} parts of a split model, but not which one "
                               "(split.no).", hint="Download the model again.")
    if number != 0:
        start = path.with_name(split_part_name(named[0], 1, parts)) if named else None
        if start is None or not start.exists():
            raise ModelFileInvalid(f"{path} is part {number + 1} of {parts} of a split model, and part 1 of {parts} "
                                   f"is missing{f' ({start.name} is not beside it)' if start else ''}; llama.cpp "
                                   "loads a split model from its first part.",
                                   hint="Download the missing part into the same folder, or choose another model.")
        raise ModelFileInvalid(f"{path} is part {number + 1} of {parts} of a split model; llama.cpp loads such a "
                               f"model from its first part, {start.name}.", hint=f"Choose {start.name} instead.")
    if named is None or named[1:] != (1, parts):
        raise ModelFileInvalid(f"{path} is the first part of a model split in {parts} files, but its name does "
                               "not say so, so the other parts cannot be found (llama.cpp looks for "
                               f"{split_part_name('name', 1, parts)} and the parts after it).",
                               hint="Give it and its other parts their names from the download again.")
    files = tuple(path.with_name(split_part_name(named[0], part, parts)) for part in range(1, parts + 1))
    for number, file in enumerate(files[1:], start=2):
        if not file.exists():
            raise ModelFileInvalid(f"{path} is the first part of a model split in {parts} files, and part {number} "
                                   f"of {parts} is missing ({file.name} is not beside it).",
                                   hint="Download the missing part into the same folder, or choose another model.")
    return model_info(first, [read_header(file) for file in files[1:]]), files


def _check_split(first: GGUFHeader, rest: Sequence[GGUFHeader]) -> None:
    """Refuse parts that do not belong together, as llama.cpp would when it loads them."""
    parts = split_count(first)
    if parts == 1 and rest:
        raise ModelFileInvalid(f"{first.path} is no first part of a split model (its header names no parts), yet "
                               f"{1 + len(rest)} files were given as its parts.", hint="Choose another file.")
    if parts != 1 + len(rest):
        raise ModelFileInvalid(f"{first.path} is one of {parts} parts of a split model, but Cleo has {1 + len(rest)} "
                               "of them.", hint="Download every part of the model into one folder.")
    if parts == 1:
        return
    for number, header in enumerate((first, *rest), start=1):
        said = header.metadata.get(_SPLIT_NO)
        if (said, split_count(header)) != (number - 1, parts):  # split.no counts from 0
            raise ModelFileInvalid(f"{header.path} should be part {number} of {parts} of a split model, but its "
                                   f"header says {_said_part(header)}; the parts belong to different models or "
                                   "downloads.", hint="Download every part of the model again, from one listing.")
    expected = first.metadata.get(_SPLIT_TENSORS)
    found = sum(len(h.tensors) for h in (first, *rest))
    if isinstance(expected, int) and expected != found:
        raise ModelFileInvalid(f"{first.path} is a model split in {parts} files that should hold {expected} tensors "
                               f"together, but they hold {found}.",
                               hint="Download every part of the model again, from one listing.")


def _said_part(header: GGUFHeader) -> str:
    number, parts = header.metadata.get(_SPLIT_NO), header.metadata.get(_SPLIT_COUNT)
    if not isinstance(number, int) or not isinstance(parts, int):
        return "it is no part of a split model"
    return f"it is part {number + 1} of {parts}"


def _quantization(headers: Sequence[GGUFHeader]) -> str:
    file_type = headers[0].metadata.get("general.file_type")
    if isinstance(file_type, int):
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    # No (known) file type: name the tensor type that holds most of the bytes.
    by_type: dict[str, int] = {}
    for tensor in (t for header in headers for t in header.tensors):
        by_type[tensor.type.name] = by_type.get(tensor.type.name, 0) + tensor.n_bytes
    return max(by_type, key=lambda name: by_type[name])


class ModelCatalog:
    """The models in Cleo's models folder and in the folders and files the user added."""

    def __init__(self, extra_folders: Iterable[Path] = ()) -> None:
        self.folders = [folders().models, *([BUNDLED_MODELS] if BUNDLED_MODELS.is_dir() else []), *extra_folders]

    def scan(self) -> tuple[list[ModelInfo], list[Unusable]]:
        """Every `.gguf` file below the folders: the usable models and the unusable files.

        A split model is one entry, listed at its first part (where llama.cpp loads it from) with
        the size and parameters of all parts; its other parts are not listed on their own, and a
        missing or damaged part makes the whole model unusable, with that part named."""
        models: list[ModelInfo] = []
        unusable: list[Unusable] = []
        covered: set[Path] = set()  # the files of the models found: every part of a split model
        refused: set[Path] = set()  # files listed as unusable
        later_parts: list[tuple[Path, str, int]] = []  # parts 2..N, by name: most belong to a model found already
        seen: set[Path] = set()
        for path in self._files():
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            named = split_part(path.name)
            if named and named[1] > 1:
                later_parts.append((path, named[0], named[2]))
            else:
                _add(path, models, unusable, covered, refused)
        for path, prefix, parts in later_parts:
            first = path.with_name(split_part_name(prefix, 1, parts)).resolve()
            if path.resolve() in covered or first in refused:
                continue  # listed with its first part, or that part's problem is listed already
            if not _add(path, models, unusable, covered, refused):
                refused.add(first)  # one problem per split model, not one per part
        return models, unusable

    def _files(self) -> Iterable[Path]:
        for folder in self.folders:
            yield from sorted(folder.rglob("*.gguf")) if folder.is_dir() else [folder] if folder.is_file() else []


def _add(path: Path, models: list[ModelInfo], unusable: list[Unusable], covered: set[Path], refused: set[Path]) -> bool:
    """Describe the model loaded from `path` into `models`, or its problem into `unusable`."""
    try:
        info, files = _read_model(path)
    except KnownError as exc:
        unusable.append(Unusable(path, exc.message))
        refused.add(path.resolve())
        return False
    models.append(info)
    covered.update(file.resolve() for file in files)
    return True
