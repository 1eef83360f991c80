"""A GGUF file's header read over the network, before the file is downloaded, and whether it fits.

The header (metadata and tensor table) sits at the start of the file; the weights follow. Cleo
asks for the first megabyte with an HTTP Range request and lets the one GGUF reader
(`engine.models.gguf_header.read_header_from`, the reader of files on disk too) parse it from a
file object that fetches more (twice as much each time) when the reader needs bytes it does not
have yet: a vocabulary can take several megabytes. The reader's own limits apply, plus
`MAX_HEADER_BYTES` of network reads, so a hostile or broken file costs a bounded download however
it is built.

From the header come the facts a person needs before a large download (architecture,
parameters, experts, context, quantization, chat template), by `engine.models.catalog.model_info`
exactly as for a model on disk, split models included, and the estimate of `engine.models.fit`
for this machine.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from engine.errors import ModelFileInvalid
from engine.models.catalog import ModelInfo, model_info
from engine.models.fit import Gpu, available_memory, estimate_need, plan_gpu_layers
from engine.models.gguf_header import GGUFHeader, read_header_from
from engine.models.hub import HubFile, RemotePart, RepoFiles
from engine.models.hub_http import HubUnreachable, get_range

FIRST_READ = 1 << 20  # most headers without a large vocabulary fit in the first megabyte
MAX_HEADER_BYTES = 64 << 20  # far above real headers (a 262k-token vocabulary is under 10 MB)

Verdict = Literal["fits on the GPU", "fits partly on the GPU", "fits in RAM only", "too large", "unknown"]


@dataclass(frozen=True)
class Fit:
    """Where the model would run on this machine, with the numbers behind it."""

    verdict: Verdict
    text: str  # one line for people, with the numbers
    need: int  # bytes of weights, context cache and overhead
    memory_free: int | None  # bytes of RAM free now; None when the OS does not say
    gpu_layers: int = 0
    layers: int = 0


@dataclass(frozen=True)
class RemoteModel:
    """What the header of a file on the Hub says, and what reading it cost."""

    file: HubFile
    info: ModelInfo  # `path` is the file's name on the Hub; sizes cover all parts of a split model
    fit: Fit
    bytes_read: int
    requests: int


class _RemoteFile:
    """The start of a file on the Hub as a read-only file object, fetched ahead in growing ranges."""

    def __init__(self, url: str, size: int, cancelled: threading.Event | None, first_read: int) -> None:
        self.url, self.size, self.cancelled = url, size, cancelled
        self.next_read = first_read
        self.held = bytearray()
        self.pos = 0
        self.requests = 0

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset
        return self.pos

    def read(self, n: int) -> bytes:
        self._fetch_to(min(self.pos + n, self.size))
        data = bytes(self.held[self.pos:self.pos + n])
        self.pos += len(data)
        return data

    def _fetch_to(self, end: int) -> None:
        while len(self.held) < end:
            if end > MAX_HEADER_BYTES:
                raise ModelFileInvalid(f"{self.url} has a header larger than {MAX_HEADER_BYTES >> 20} MB; Cleo "
                                       "does not read that much before a download.",
                                       hint="Choose another file; this one is damaged or not a usable model.")
            start = len(self.held)
            stop = min(self.size, MAX_HEADER_BYTES, max(end, start + self.next_read))
            data = get_range(self.url, start, stop, cancelled=self.cancelled)
            self.requests += 1
            if len(data) < stop - start:
                raise HubUnreachable(f"Hugging Face cannot be reached: {self.url} ended after {start + len(data)} "
                                     f"of the {self.size} bytes the file list announced.",
                                     hint="Try again later; the file may be changing on the server.")
            self.held += data
            self.next_read *= 2


def read_remote_header(url: str, size: int, name: str, *, cancelled: threading.Event | None = None,
                       first_read: int = FIRST_READ) -> tuple[GGUFHeader, int, int]:
    """The header of the `size`-byte GGUF at `url`, and the bytes and requests it took."""
    remote = _RemoteFile(url, size, cancelled, first_read)
    header = read_header_from(remote, size, name)
    return header, len(remote.held), remote.requests


def describe_remote(files: RepoFiles, file: HubFile, *, context_size: int, gpus: Sequence[Gpu] = (),
                    memory_free: int | None = None, cancelled: threading.Event | None = None,
                    first_read: int = FIRST_READ) -> RemoteModel:
    """Read `file`'s header (every part's, for a split model) and estimate its fit on this machine."""
    if file.kind == "other":
        raise ModelFileInvalid(f"{file.name} is not a GGUF file.", hint="Choose a .gguf file.")
    if file.missing_parts:
        raise ModelFileInvalid(f"{file.name} is one part of a split model whose other {file.missing_parts} "
                               "part(s) are missing from the repository.", hint="Choose another file.")
    headers: list[GGUFHeader] = []
    read = requests = 0
    for part in file.parts:
        header, n_bytes, n_requests = read_remote_header(files.file_url(part), part.size, _label(files, part),
                                                         cancelled=cancelled, first_read=first_read)
        headers.append(header)
        read, requests = read + n_bytes, requests + n_requests
    info = model_info(headers[0], headers[1:])  # the same facts, checks and sums as for a file on disk
    free = available_memory() if memory_free is None else memory_free
    return RemoteModel(file, info, estimate_fit(info, context_size, gpus, free), read, requests)


def estimate_fit(info: ModelInfo, context_size: int, gpus: Sequence[Gpu], memory_free: int | None) -> Fit:
    """Where `info` would run with `context_size` tokens of context, from `engine.models.fit`'s estimate."""
    context = min(context_size, info.context_length) if info.context_length else context_size
    need = estimate_need(info, context).total
    numbers = f"needs about {_gb(need)} with a {context}-token context"
    ram = f"{_gb(memory_free)} of memory free" if memory_free is not None else "free memory unknown"
    plan = plan_gpu_layers(info, context, -1, gpus) if gpus else None
    layers = info.layers + 1
    gpu = max(gpus, key=lambda g: g.free) if gpus else None
    if plan is not None and gpu is not None and plan.layers >= layers:
        return Fit("fits on the GPU", f"fits on the GPU: {numbers}; {gpu.name} has {_gb(gpu.free)} free",
                   need, memory_free, plan.layers, layers)
    on_gpu = plan.layers if plan is not None else 0
    if memory_free is None:
        return Fit("unknown", f"{numbers}; {ram}", need, None, on_gpu, layers)
    left_for_ram = need * (layers - on_gpu) // layers if on_gpu else need
    if left_for_ram > memory_free:
        return Fit("too large", f"too large: {numbers}, {ram}", need, memory_free, 0, layers)
    if on_gpu and gpu is not None:
        return Fit("fits partly on the GPU", f"fits partly on the GPU ({on_gpu} of {layers} layers on "
                   f"{gpu.name}, the rest in memory): {numbers}; {ram}", need, memory_free, on_gpu, layers)
    return Fit("fits in RAM only", f"fits in RAM only: {numbers}; {ram}", need, memory_free, 0, layers)


def _label(files: RepoFiles, part: RemotePart) -> str:
    return f"{files.repo}/{part.path}"


def _gb(n: int) -> str:
    return f"{n / 1024**3:.1f} GB"
