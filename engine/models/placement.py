"""Where a model's weights go, GPU or CPU, planned from its GGUF tensor table before llama.cpp loads it.

llama.cpp offloads whole layers from the top (`n_gpu_layers`: the output layer first, then the
repeating blocks from the last one down), keeps the input embeddings in CPU memory, and lets a
caller keep chosen tensors in CPU memory by name (tensor buffer-type overrides). A layer's keys
and values live where the layer does.

For a Mixture-of-Experts model most of the bytes are experts, of which each token reads a few:
when the model does not fit, attention, norms, the router and the KV cache go to the GPU first
(every token reads all of them) and the experts of the first layers stay in CPU memory, as
llama.cpp's `--n-cpu-moe N` does by hand. A dense model gets as many layers as fit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models.catalog import ModelInfo, split_count, split_part, split_part_name
from engine.models.fit import Gpu, estimate_need
from engine.models.gguf_header import TensorInfo, read_header

MIB = 1024 * 1024
# Expert weights of one layer, as llama.cpp names them (`ffn_up_exps`, `ffn_gate_up_exps`, their biases).
EXPERTS = r"ffn_[a-z_]*_exps\."
_EXPERT_TENSOR = re.compile(rf"^blk\.(\d+)\.{EXPERTS}")
_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")
# The input layer, which llama.cpp always keeps in CPU memory (offloading it gains little).
_INPUT_TENSORS = ("token_embd.", "token_embd_norm.", "token_types.", "position_embd.")
# GPU memory for the computation itself, beyond weights and KV cache: llama.cpp's compute buffer
# (measured ~100-300 MB on 1-30B models) plus the logits of a 512-token batch, 4 bytes each.
_COMPUTE_BYTES = 256 * MIB
_BATCH = 512


@dataclass(frozen=True)
class LayerSizes:
    """A model's weight bytes, grouped by where llama.cpp can put them."""

    blocks: tuple[int, ...]  # each repeating layer without its experts
    experts: tuple[int, ...]  # each repeating layer's expert tensors (0 in a dense layer)
    output: int  # the output layer, with the embeddings again when the output reuses them
    largest_expert: int  # one expert tensor is copied to the GPU to read a long prompt when it stays on the CPU

    @property
    def expert_layers(self) -> tuple[int, ...]:
        """Indices of the layers that have experts."""
        return tuple(i for i, size in enumerate(self.experts) if size)


@dataclass(frozen=True)
class Placement:
    """Where the model runs: the layers llama.cpp offloads, the tensors kept in CPU memory, and why."""

    gpu_layers: int  # llama.cpp's n_gpu_layers: the output layer and the last blocks
    layers: int  # layers that can be offloaded: the repeating blocks and the output layer
    gpu: str = ""  # the GPU's name; "" when nothing is on a GPU
    cpu_tensors: tuple[str, ...] = ()  # llama.cpp tensor-name patterns kept in CPU memory
    experts_on_cpu: int = 0  # layers whose experts `cpu_tensors` keeps in CPU memory
    expert_layers: int = 0  # layers that have experts (0 for a dense model)
    explanation: str = ""  # where it runs and why, in the user's words
    notice: str = ""  # non-empty when the user expected a GPU and gets (partly) the CPU
    gpu_need: int = 0  # bytes of VRAM all of it would take (0 when not planned from free VRAM)

    @property
    def device(self) -> str:
        """Where it runs, short enough for the status line."""
        if not self.gpu_layers or not self.gpu:
            return "CPU"
        parts = [self.gpu]
        if self.gpu_layers < self.layers:
            parts.append(f"{self.gpu_layers}/{self.layers} layers")
        if self.experts_on_cpu == self.expert_layers and self.experts_on_cpu:
            parts.append("experts on the CPU")
        elif self.experts_on_cpu:
            parts.append(f"experts of {self.experts_on_cpu}/{self.expert_layers} layers on the CPU")
        return f"GPU ({', '.join(parts)})" + (" + CPU" if len(parts) > 1 else "")

    def as_json(self) -> dict[str, Any]:
        return {"device": self.device, "gpu": self.gpu or None, "gpu_layers": self.gpu_layers, "layers": self.layers,
                "experts_on_cpu": self.experts_on_cpu, "expert_layers": self.expert_layers,
                "cpu_tensors": list(self.cpu_tensors), "explanation": self.explanation, "gpu_need_bytes": self.gpu_need}


def model_tensors(path: Path) -> tuple[TensorInfo, ...]:
    """The tensor table of the model loaded from `path`, every part of a split model included
    (they lie beside the first part, as `engine.models.catalog` checked when it read the model)."""
    first = read_header(path)
    parts, named = split_count(first), split_part(path.name)
    if parts == 1 or named is None:
        return first.tensors
    rest = (read_header(path.with_name(split_part_name(named[0], part, parts))) for part in range(2, parts + 1))
    return first.tensors + tuple(t for header in rest for t in header.tensors)


def layer_sizes(tensors: Iterable[TensorInfo], layers: int) -> LayerSizes:
    """`tensors` summed per layer as llama.cpp places them; `layers` is the model's block count."""
    blocks, experts = [0] * layers, [0] * layers
    output = embeddings = largest_expert = 0
    has_output = False
    for tensor in tensors:
        expert, block = _EXPERT_TENSOR.match(tensor.name), _LAYER_TENSOR.match(tensor.name)
        if expert and int(expert[1]) < layers:
            experts[int(expert[1])] += tensor.n_bytes
            largest_expert = max(largest_expert, tensor.n_bytes)
        elif block and int(block[1]) < layers:
            blocks[int(block[1])] += tensor.n_bytes
        elif tensor.name.startswith(_INPUT_TENSORS):
            embeddings += tensor.n_bytes if tensor.name == "token_embd.weight" else 0
        else:  # the output layer, and the odd layer llama.cpp may add past the block count
            output += tensor.n_bytes
            has_output = has_output or tensor.name == "output.weight"
    # Without an output matrix llama.cpp reads the output through the embeddings, loading them again there.
    return LayerSizes(tuple(blocks), tuple(experts), output + (0 if has_output else embeddings), largest_expert)


def experts_pattern(layers: Sequence[int]) -> str:
    """The llama.cpp tensor-name pattern for the experts of `layers` (a regular expression it searches for)."""
    return rf"blk\.({'|'.join(map(str, layers))})\.{EXPERTS}"


def plan_placement(info: ModelInfo, tensors: Iterable[TensorInfo], cells: int, *, requested: int,
                   gpus: Sequence[Gpu], budget_mb: int = 0) -> Placement:
    """Where to run `info` with a KV cache of `cells` tokens (all sequences together).

    `requested` is the GPU layers setting: -1 plans from free VRAM, 0 means the CPU, N forces N
    layers. `budget_mb` caps the VRAM Cleo may use (0: no cap); the GPU with the most free VRAM is used.
    """
    total = info.layers + 1
    sizes = layer_sizes(tensors, info.layers)
    moe = len(sizes.expert_layers)
    if requested == 0:
        return Placement(0, total, expert_layers=moe, explanation="on the CPU, as the GPU layers setting (0) asks")
    if not gpus:
        explanation = "on the CPU: this build of Cleo found no GPU it can use"
        notice = (f"GPU layers is set to {requested}, but this build of Cleo found no GPU it can use; the model "
                  "runs on the CPU." if requested > 0 else "")
        return Placement(0, total, expert_layers=moe, explanation=explanation, notice=notice)
    gpu = max(gpus, key=lambda g: g.free)
    if requested > 0:
        layers = min(requested, total)
        which = f"all {total} layers" if layers == total else f"{layers} of {total} layers"
        return Placement(layers, total, gpu.name, expert_layers=moe,
                         explanation=f"{which} on {gpu.name}, as the GPU layers setting ({requested}) asks")
    return _Planner(info, sizes, cells, gpu, budget_mb).plan()


class _Planner:
    """The automatic plan for one model, context and GPU."""

    def __init__(self, info: ModelInfo, sizes: LayerSizes, cells: int, gpu: Gpu, budget_mb: int) -> None:
        self.info, self.sizes, self.gpu = info, sizes, gpu
        self.usable = min(gpu.free, budget_mb * MIB) if budget_mb > 0 else gpu.free
        self.kv = estimate_need(info, cells).kv_cache
        self.kv_layer = -(-self.kv // info.layers) if info.layers else 0
        self.compute = _COMPUTE_BYTES + _BATCH * 4 * info.vocabulary_size
        self.total = info.layers + 1
        self.need = self.compute + sizes.output + sum(sizes.blocks) + sum(sizes.experts) + self.kv
        budget = f"{_gb(self.usable)} of VRAM that the GPU memory budget allows" if self.usable < gpu.free else ""
        self.vram = f"{budget} ({_gb(gpu.free)} free)" if budget else f"{_gb(gpu.free)} of VRAM free"

    def plan(self) -> Placement:
        if self.need <= self.usable:
            return self._placed(self.total, (), f"all on {self.gpu.name}: it needs about {_gb(self.need)}, with "
                                                f"{self.vram}", "")
        if self.sizes.expert_layers:
            return self._experts_on_cpu()
        layers = self._top_layers(self.usable - self.compute)
        return self._partly(layers, (), f"{layers} of {self.total} layers on {self.gpu.name}, the rest on the CPU")

    def _experts_on_cpu(self) -> Placement:
        """Everything but experts on the GPU, then the experts of the last layers while they fit."""
        expert_layers = self.sizes.expert_layers
        room = (self.usable - self.compute - self.sizes.largest_expert - self.sizes.output
                - sum(self.sizes.blocks) - self.kv)
        if room < 0:  # not even without experts: experts all on the CPU, and as many layers as fit
            layers = self._top_layers(self.usable - self.compute - self.sizes.largest_expert)
            return self._partly(layers, expert_layers, f"experts of all {len(expert_layers)} layers and "
                                f"{self.total - layers} of {self.total} layers on the CPU, the rest on {self.gpu.name}")
        back = 0
        for layer in reversed(expert_layers):
            if self.sizes.experts[layer] > room:
                break
            room -= self.sizes.experts[layer]
            back += 1
        on_cpu = expert_layers[:len(expert_layers) - back]
        return self._partly(self.total, on_cpu, f"experts of {len(on_cpu)} of {len(expert_layers)} layers on the "
                                                f"CPU, everything else on {self.gpu.name}")

    def _top_layers(self, room: int) -> int:
        """How many layers fit in `room` bytes, counted as llama.cpp offloads them: output first, then
        the blocks from the last one down, each with its keys and values (experts apart)."""
        room -= self.sizes.output
        if room < 0:
            return 0
        layers = 1
        for block in reversed(self.sizes.blocks):
            room -= block + self.kv_layer
            if room < 0:
                break
            layers += 1
        return min(layers, self.total)

    def _partly(self, layers: int, cpu_experts: Sequence[int], where: str) -> Placement:
        name = self.info.path.name
        if not layers:
            explanation = f"on the CPU: {self.vram} is too little for any layer (it needs about {_gb(self.need)})"
            return Placement(0, self.total, expert_layers=len(self.sizes.expert_layers), explanation=explanation,
                             notice=f"{name} runs on the CPU, which is slower: {explanation}.", gpu_need=self.need)
        explanation = f"{where}: {self.vram}; all of it would need about {_gb(self.need)}"
        return self._placed(layers, cpu_experts, explanation,
                            f"{name} runs partly on the CPU, which is slower: {explanation}.")

    def _placed(self, layers: int, cpu_experts: Sequence[int], explanation: str, notice: str) -> Placement:
        patterns = (experts_pattern(cpu_experts),) if cpu_experts else ()
        return Placement(layers, self.total, self.gpu.name, patterns, len(cpu_experts),
                         len(self.sizes.expert_layers), explanation, notice, self.need)


def _gb(n: int) -> str:
    return f"{n / 1024**3:.1f} GB"
