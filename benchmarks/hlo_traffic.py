"""Memory traffic and matmul flops of a compiled program, read from its optimised HLO text.

XLA's `cost_analysis()` counts a while loop's body once, so it understates
any chunked or scanned loss (and the compile-only GPU client has none). This
module counts from `compiled.as_text()` instead, in plain Python:

* **traffic**: for every kernel (a top-level instruction that runs: a fusion,
  a custom call such as a cuBLAS gemm, a copy, a collective, an unfused
  elementwise op), the bytes of its operands plus the bytes of its result.
  Bookkeeping instructions move nothing (`parameter`, `constant`, `tuple`,
  `get-tuple-element`, `bitcast`, ...). A dynamic slice reads only its slice
  and a dynamic update slice writes only its update, also where they sit
  inside a fusion: a fusion parameter read only by dynamic slices counts the
  slices, one that is only the buffer of a dynamic update slice counts
  nothing (it is updated in place), and a fusion whose result is a dynamic
  update slice writes the update. Arrays in on-chip memory (a TPU layout's
  memory space `S(1)`) are not counted.
* **flops**: `2·M·N·K` of every dot, gemm custom call and convolution, also
  inside fusions, by the dtype of its left operand.
* both multiplied by the trip count of every enclosing while loop: XLA's
  `known_trip_count` annotation, else the integer constant the loop
  condition compares against (assuming a counter from 0 by 1).

`roofline(counts, target)` turns them into an estimated time,
`max(flops / peak, bytes / bandwidth)`, with the peaks of `TARGETS`.

    >>> hlo = '''
    ... ENTRY %main (x: f32[256]) -> f32[256] {
    ...   %x = f32[256]{0} parameter(0)
    ...   ROOT %neg = f32[256]{0} negate(%x)
    ... }'''
    >>> count(hlo).bytes  # one read and one write of 256 floats
    2048.0

It is an estimate at kernel boundaries: caches, re-reads inside a kernel,
layout padding and the autotuner's choices are not seen.
"""

import dataclasses
import math
import re
from collections.abc import Iterator

DTYPE_BYTES: dict[str, float] = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
    "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
    "c128": 16, "token": 0,
}  # fmt: skip
"""Bytes per element; the `f8e...` types are one byte."""

_ARRAY = re.compile(r"\b(pred|token|bf16|f8e\w+|[fsuc]\d+)\[([^\]]*)\](\{[^}]*\})?")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$")
_HEADER = re.compile(r"^(ENTRY\s+)?%?(\S+)\s+\(.*->.*\{\s*$")
_TRIP = re.compile(r"known_trip_count\W+n\W+(\d+)")

BOOKKEEPING = frozenset(
    {
        *("parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all"),
        *("partition-id", "replica-id", "opt-barrier", "add-dependency", "domain"),
        *("while", "call", "conditional"),
    }
)
"""Opcodes that are not kernels (loops, calls and branches are entered instead)."""

GEMM_TARGETS = ("gemm", "matmul")
"""Substrings of the matmul custom-call targets (`__cublas$gemm`, `__cublas$lt$matmul`)."""


@dataclasses.dataclass(frozen=True)
class Array:
    """One array of an HLO type: `f32[8,16]{1,0}` -> `Array("f32", (8, 16), on_chip=False)`."""

    dtype: str
    dims: tuple[int, ...]
    on_chip: bool = False

    @property
    def bytes(self) -> float:
        size = 1 if self.dtype.startswith("f8") else DTYPE_BYTES.get(self.dtype, 4)
        return size * math.prod(self.dims)

    @property
    def hbm_bytes(self) -> float:
        """Bytes in device memory: none for an array in on-chip memory (`S(1)`)."""
        return 0 if self.on_chip else self.bytes


def arrays(hlo_type: str) -> list[Array]:
    """The arrays of a type, tuples flattened: `(f32[8], s32[])` -> two arrays."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(hlo_type):
        # Dynamic dimensions print as `<=N`: count the bound.
        sizes = tuple(int(re.sub(r"\D", "", d)) for d in dims.split(",") if d.strip())
        out.append(Array(dtype, sizes, on_chip="S(1)" in (layout or "")))
    return out


def type_bytes(hlo_type: str) -> float:
    """Device-memory bytes of every array of a type."""
    return sum(a.hbm_bytes for a in arrays(hlo_type))


@dataclasses.dataclass
class Instruction:
    """One HLO instruction: `%name = type opcode(operands), attributes`."""

    name: str
    type: str
    opcode: str
    operands: list[str]
    attributes: str
    root: bool = False

    def called(self, key: str) -> list[str]:
        """Names of the computations in attribute `key` (`calls`, `body`, `branch_computations`)."""
        match = re.search(rf"\b{key}=(\{{[^}}]*\}}|%?[\w.\-]+)", self.attributes)
        if match is None:
            return []
        return [name.strip(" %{}") for name in match.group(1).split(",")]


@dataclasses.dataclass
class Computation:
    """The instructions of one computation, by name, in order; `root` is the last `ROOT`."""

    name: str
    instructions: dict[str, Instruction]
    root: str | None = None

    def users(self, name: str) -> list[tuple[Instruction, int]]:
        """(instruction, operand index) of every use of `name`."""
        return [
            (inst, i)
            for inst in self.instructions.values()
            for i, operand in enumerate(inst.operands)
            if operand == name
        ]


def _balanced(text: str, start: int) -> int:
    """Index just past the bracket group that opens at `text[start]`."""
    depth = 0
    for i in range(start, len(text)):
        depth += text[i] in "([{"
        depth -= text[i] in ")]}"
        if depth == 0:
            return i + 1
    raise ValueError(f"unbalanced brackets in {text!r}")


def _split_top(text: str) -> list[str]:
    """`a, f32[2,3] b, (c, d)` -> `["a", "f32[2,3] b", "(c, d)"]`: commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def parse_instruction(line: str) -> Instruction | None:
    """An instruction line, or None for anything else (headers, braces, metadata tables)."""
    # Long operand lists carry `/*index=5*/` comments.
    match = _INSTRUCTION.match(re.sub(r"/\*.*?\*/", "", line))
    if match is None or "(" not in match.group(2):
        return None
    name, rest = match.groups()
    type_end = _balanced(rest, 0) if rest.startswith("(") else rest.find(" ")
    hlo_type, rest = rest[:type_end], rest[type_end:].lstrip()
    opcode_match = re.match(r"([\w\-]+)\(", rest)
    if opcode_match is None:
        return None
    open_paren = opcode_match.end() - 1
    close = _balanced(rest, open_paren)
    # An operand prints as `%name` or `f32[8]{0} %name`: the name is the last word.
    operands = [p.split()[-1].lstrip("%") for p in _split_top(rest[open_paren + 1 : close - 1])]
    return Instruction(
        name=name,
        type=hlo_type,
        opcode=opcode_match.group(1),
        operands=operands,
        attributes=rest[close:],
        root=line.lstrip().startswith("ROOT"),
    )


@dataclasses.dataclass
class Module:
    """A parsed HLO module: its computations by name and the name of the entry."""

    computations: dict[str, Computation]
    entry: str

    def type_of(self, name: str) -> str:
        """The type of the instruction `name` (names are unique within a module)."""
        return self._types[name]

    def __post_init__(self) -> None:
        self._types = {
            inst.name: inst.type
            for comp in self.computations.values()
            for inst in comp.instructions.values()
        }


def parse(hlo: str) -> Module:
    """Every computation of an HLO module's text (`compiled.as_text()`).

    Raises:
      ValueError: the text has no ENTRY computation.
    """
    computations: dict[str, Computation] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header is not None and "=" not in line.split("(", 1)[0]:
            current = Computation(header.group(2), {})
            computations[current.name] = current
            entry = current.name if header.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None and (inst := parse_instruction(line)) is not None:
            current.instructions[inst.name] = inst
            current.root = inst.name if inst.root else current.root
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return Module(computations, entry)


@dataclasses.dataclass
class Counts:
    """Traffic and matmul flops of a program (or part of one).

    Attributes:
      bytes: operand plus result bytes of every kernel, times trip counts.
      flops: `2·M·N·K` of every matmul, by the dtype of its left operand.
    """

    bytes: float = 0.0
    flops: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def total_flops(self) -> float:
        return sum(self.flops.values())

    def add(self, other: "Counts", times: float = 1) -> None:
        self.bytes += times * other.bytes
        for dtype, flops in other.flops.items():
            self.flops[dtype] = self.flops.get(dtype, 0.0) + times * flops


def trip_count(module: Module, loop: Instruction) -> int:
    """XLA's `known_trip_count` of a while loop, else the condition's integer constant.

    Raises:
      ValueError: neither is there (a loop whose bound is data).
    """
    known = _TRIP.search(loop.attributes)
    if known is not None:
        return int(known.group(1))
    (condition,) = loop.called("condition")
    bounds = [
        int(inst.operands[0])
        for inst in module.computations[condition].instructions.values()
        if inst.opcode == "constant"
        and re.match(r"[su]\d+\[\]", inst.type)
        and re.fullmatch(r"-?\d+", inst.operands[0])
    ]
    if len(bounds) != 1:
        raise ValueError(f"cannot tell the trip count of {loop.name}")
    return bounds[0]


def _matmul_flops(module: Module, inst: Instruction) -> tuple[str, float] | None:
    """(dtype of the left operand, 2·M·N·K) of a dot, gemm custom call or convolution."""
    if inst.opcode == "dot":
        key = r"lhs_contracting_dims=\{([\d,]*)\}"
    elif inst.opcode == "custom-call" and any(t in inst.attributes for t in GEMM_TARGETS):
        key = r"lhs_contracting_dimensions\W+\[([^\]]*)\]"
    elif inst.opcode == "convolution":
        return _conv_flops(module, inst)
    else:
        return None
    (lhs,) = arrays(module.type_of(inst.operands[0]))
    out = arrays(inst.type)[0]  # a gemm's result is (output, workspace)
    match = re.search(key, inst.attributes)
    contracting = [int(d) for d in re.findall(r"\d+", match.group(1))] if match else []
    k = math.prod(lhs.dims[d] for d in contracting)
    return lhs.dtype, 2.0 * math.prod(out.dims) * k


def _conv_flops(module: Module, inst: Instruction) -> tuple[str, float]:
    """A convolution (how TPU HLO writes some matmuls): 2 · outputs · kernel inputs per output."""
    (lhs,) = arrays(module.type_of(inst.operands[0]))
    (rhs,) = arrays(module.type_of(inst.operands[1]))
    labels = re.search(r"dim_labels=\w+_(\w+)->", inst.attributes)
    kernel = labels.group(1) if labels else ""
    groups = re.search(r"feature_group_count=(\d+)", inst.attributes)
    per_output = math.prod(d for d, label in zip(rhs.dims, kernel, strict=False) if label != "o")
    per_output //= int(groups.group(1)) if groups else 1
    return lhs.dtype, 2.0 * math.prod(arrays(inst.type)[0].dims) * per_output


def _flops_in(module: Module, computation: str) -> Counts:
    """The matmul flops of a fused (or nested) computation, once."""
    counts = Counts()
    for inst in module.computations[computation].instructions.values():
        if (flops := _matmul_flops(module, inst)) is not None:
            counts.add(Counts(flops={flops[0]: flops[1]}))
        for name in inst.called("calls"):
            counts.add(_flops_in(module, name))
    return counts


def _through_bitcasts(comp: Computation, name: str) -> Iterator[tuple[Instruction, int]]:
    """The uses of `name`, looking through bitcasts (which move nothing)."""
    for user, index in comp.users(name):
        if user.opcode == "bitcast":
            yield from _through_bitcasts(comp, user.name)
        else:
            yield user, index


_TAKES_PART = frozenset({"dynamic-slice", "slice", "gather"})
"""Opcodes that read only what they return of their first operand."""


def _param_bytes(module: Module, comp: Computation, param: Instruction) -> float:
    """What a fused kernel reads of one parameter: only the slices, if it is only sliced
    (or gathered from)."""
    uses = list(_through_bitcasts(comp, param.name))
    sliced = [u for u, i in uses if u.opcode in _TAKES_PART and i == 0]
    in_place = [u for u, i in uses if u.opcode == "dynamic-update-slice" and i == 0]
    if uses and len(sliced) + len(in_place) == len(uses):
        return sum(type_bytes(u.type) for u in sliced)
    return type_bytes(param.type)


def _written_bytes(module: Module, comp: Computation, name: str) -> float:
    """What a kernel writes for its result `name`: the update of a dynamic update slice."""
    inst = comp.instructions[name]
    if inst.opcode == "bitcast":
        return _written_bytes(module, comp, inst.operands[0])
    if inst.opcode == "tuple":
        return sum(_written_bytes(module, comp, operand) for operand in inst.operands)
    if inst.opcode == "dynamic-update-slice":
        return type_bytes(module.type_of(inst.operands[1]))
    return type_bytes(inst.type)


def _fusion_bytes(module: Module, fusion: Instruction) -> float:
    (called,) = fusion.called("calls")
    comp = module.computations[called]
    params = {
        int(re.search(r"\d+", p.operands[0]).group()): p
        for p in comp.instructions.values()
        if p.opcode == "parameter"
    }
    read = sum(
        _param_bytes(module, comp, params[i])
        for i, operand in enumerate(fusion.operands)
        if type_bytes(module.type_of(operand)) > 0  # not in on-chip memory
    )
    return read + _written_bytes(module, comp, comp.root)


def kernel_bytes(module: Module, comp: Computation, inst: Instruction) -> float:
    """Operand plus result bytes of one kernel, slices and in-place updates counted as such."""
    if inst.opcode == "fusion":
        return _fusion_bytes(module, inst)
    operands = [type_bytes(module.type_of(name)) for name in inst.operands]
    if inst.opcode in _TAKES_PART:
        return 2 * type_bytes(inst.type) + sum(operands[1:])
    if inst.opcode == "dynamic-update-slice":
        return 2 * operands[1] + sum(operands[2:])
    result = arrays(inst.type)
    if inst.opcode.endswith("-start") or (
        inst.opcode == "custom-call" and any(t in inst.attributes for t in GEMM_TARGETS)
    ):
        # An async start's result is (destination, source, context); a gemm's is
        # (output, workspace): only the first is written.
        result = result[:1]
    return sum(operands) + sum(a.hbm_bytes for a in result)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One kernel launch site: its instruction, how often it runs, and what one run moves."""

    inst: Instruction
    runs: int
    counts: Counts


def kernels(module: Module, name: str, runs: int = 1) -> Iterator[Kernel]:
    """Every kernel of a computation, loops, calls and branches entered, with its run count."""
    comp = module.computations[name]
    for inst in comp.instructions.values():
        if inst.opcode == "while":
            trips = runs * trip_count(module, inst)
            for called in inst.called("body") + inst.called("condition"):
                yield from kernels(module, called, trips)
        elif inst.opcode == "call":
            for called in inst.called("to_apply"):
                yield from kernels(module, called, runs)
        elif inst.opcode == "conditional":
            yield from _largest_branch(module, inst, runs)
        elif inst.opcode not in BOOKKEEPING and not inst.opcode.endswith(("-done", "-update")):
            yield Kernel(inst, runs, _kernel_counts(module, comp, inst))


def _kernel_counts(module: Module, comp: Computation, inst: Instruction) -> Counts:
    counts = Counts(bytes=kernel_bytes(module, comp, inst))
    if (flops := _matmul_flops(module, inst)) is not None:
        counts.add(Counts(flops={flops[0]: flops[1]}))
    for called in inst.called("calls"):
        counts.add(_flops_in(module, called))
    return counts


def _total(found: Iterator[Kernel]) -> Counts:
    counts = Counts()
    for kernel in found:
        counts.add(kernel.counts, kernel.runs)
    return counts


def _largest_branch(module: Module, inst: Instruction, runs: int) -> list[Kernel]:
    """A conditional runs one branch: the kernels of the one that moves the most."""
    names = inst.called("branch_computations") or [
        *inst.called("true_computation"),
        *inst.called("false_computation"),
    ]
    branches = [list(kernels(module, name, runs)) for name in names]
    return max(branches, key=lambda ks: (_total(iter(ks)).bytes, _total(iter(ks)).total_flops))


def count(hlo: str) -> Counts:
    """Traffic and matmul flops of a whole program, from `compiled.as_text()`."""
    module = parse(hlo)
    return _total(kernels(module, module.entry))


def top_kernels(hlo: str, n: int = 10) -> list[tuple[str, int, float, float]]:
    """The `n` kernels that move the most: `(name, runs, total bytes, total flops)`."""
    module = parse(hlo)
    rows = [
        (k.inst.name, k.runs, k.runs * k.counts.bytes, k.runs * k.counts.total_flops)
        for k in kernels(module, module.entry)
    ]
    return sorted(rows, key=lambda row: -row[2])[:n]


@dataclasses.dataclass(frozen=True)
class Target:
    """An accelerator's peaks, for the roofline estimate.

    Attributes:
      name: the `--target` name, e.g. `"h100"`.
      device: what the records call it.
      bandwidth: device-memory bytes per second.
      peak_16: dense matmul flops per second in bf16 / f16 (and 8-bit types).
      peak_32: dense matmul flops per second of a float32 matmul at JAX's
        default precision.
    """

    name: str
    device: str
    bandwidth: float
    peak_16: float
    peak_32: float

    def peak(self, dtype: str) -> float:
        return self.peak_32 if dtype in ("f32", "f64", "c64", "c128") else self.peak_16


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        # f32 matmuls at default precision run on TF32 tensor cores.
        Target("h100", "NVIDIA H100 SXM", 3.35e12, 989e12, 494e12),
        Target("h200", "NVIDIA H200", 4.8e12, 989e12, 494e12),
        # At default precision an f32 matmul on TPU is one bf16 pass: the bf16 peak.
        Target("tpu-v5e", "TPU v5 lite", 819e9, 197e12, 197e12),
        Target("tpu-v6e", "TPU v6 lite", 1.64e12, 918e12, 918e12),
    )
}
"""Published dense peaks (no sparsity) and HBM bandwidths."""


def roofline(counts: Counts, target: Target) -> float:
    """Estimated seconds: the larger of the matmul time at peak and the traffic time."""
    compute = sum(flops / target.peak(dtype) for dtype, flops in counts.flops.items())
    return max(compute, counts.bytes / target.bandwidth)
