"""Measuring what each exit of a staged model costs (``eenet profile``).

Exit k's cost is that of a sample that stops at exit k (SPEC §2.2): stages 0..k, heads
0..k and the exit decision at each of those heads. :func:`profile_model` times exactly
what the runtime (:class:`~eenet_cli.runtime.EarlyExitModel`) runs for such a sample,
with a max-prob decision (softmax, max, comparison with a threshold) at each head,
after warm-up, many times,
and the prefixes are *interleaved* (every round runs each prefix once, in a shuffled
order) so slow drift of the machine (clock, thermals, other processes) hits all exits
alike instead of biasing the last ones measured.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one sample: one
multiply-add counts as 2 FLOPs, and only the operators it knows (matmul, convolution,
attention, ...) are counted; element-wise work such as ReLU or softmax is not.
Parameters are counted once per prefix, cumulatively.

No printing and no files here: the command renders and writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from eenet_cli.errors import InputError, WorkFailed
from eenet_cli.modelspec import LoadedModel

NOISE_LIMIT = 0.2  # (p90 - p10) / median above this is called noisy


@dataclass
class ProfileResult:
    """Per-exit latency statistics (ms), FLOPs and parameter counts, all cumulative."""

    times_ms: list[np.ndarray]  # raw per-repeat prefix latencies per exit, ms
    flops: list[int]
    params: list[int]
    batch_size: int
    threads: int
    device: str
    repeats: int
    warmup: int
    input_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)

    @property
    def num_exits(self) -> int:
        return len(self.times_ms)

    def stat(self, name: str) -> list[float]:
        fn = {
            "median": np.median,
            "mean": np.mean,
            "p10": lambda a: np.percentile(a, 10),
            "p90": lambda a: np.percentile(a, 90),
        }[name]
        return [float(fn(t)) for t in self.times_ms]

    def noisy_exits(self, limit: float = NOISE_LIMIT) -> list[int]:
        med, p10, p90 = self.stat("median"), self.stat("p10"), self.stat("p90")
        return [k for k in range(self.num_exits) if med[k] > 0 and (p90[k] - p10[k]) / med[k] > limit]

    def increasing(self, values: list[float]) -> bool:
        return all(b > a for a, b in zip(values, values[1:])) and all(v > 0 for v in values)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forced_exit_policy(num_exits: int, k: int) -> dict:
    """A max-prob policy that stops every sample at exit ``k`` (max-prob is always >= 0),
    still computing the exit decision at each earlier head."""
    thresholds: list = [None] * num_exits
    if k < num_exits - 1:
        thresholds[k] = 0.0
    return {"num_exits": num_exits, "thresholds": thresholds, "scorer": {"type": "maxprob"}}


def make_prefix(module: nn.Module, k: int):
    """A callable that runs exactly what the runtime runs for a sample stopping at exit k:
    stages 0..k, heads 0..k and a max-prob exit decision at each of those heads
    (:class:`~eenet_cli.runtime.EarlyExitModel` with a policy that stops at k)."""
    from eenet_cli.runtime import EarlyExitModel

    ee = EarlyExitModel(module, forced_exit_policy(len(module.stages), k))  # type: ignore[arg-type]
    return ee.run


def count_params(stages: list[nn.Module], heads: list[nn.Module]) -> list[int]:
    seen: set[int] = set()
    out: list[int] = []
    total = 0
    for s, h in zip(stages, heads):
        for m in (s, h):
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
        out.append(total)
    return out


def count_flops(stages: list[nn.Module], heads: list[nn.Module], x1: torch.Tensor) -> list[int]:
    """Cumulative FLOPs per exit for one sample (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    out: list[int] = []
    total = 0
    with torch.inference_mode():
        h = x1
        for s, hd in zip(stages, heads):
            counter = FlopCounterMode(display=False)
            with counter:
                h = s(h)
                hd(h)
            total += int(counter.get_total_flops())
            out.append(total)
    return out


def profile_model(
    model: LoadedModel,
    input_shape: tuple[int, ...],
    *,
    batch_size: int = 1,
    repeats: int = 200,
    warmup: int = 20,
    threads: int | None = None,
    seed: int = 0,
    progress=None,
) -> ProfileResult:
    """Time every exit's prefix ``repeats`` times (interleaved), count FLOPs and parameters."""
    if not model.staged:
        raise InputError(
            "profile needs a staged model (attributes stages and heads, K modules each) to time each exit's "
            "prefix; this model only has forward()",
            source=model.spec,
        )
    if repeats < 1:
        raise InputError(f"must be at least 1, got {repeats}", field="--repeats")
    if warmup < 0:
        raise InputError(f"must be 0 or more, got {warmup}", field="--warmup")
    if batch_size < 1:
        raise InputError(f"must be at least 1, got {batch_size}", field="--batch-size")
    if threads is not None:
        if threads < 1:
            raise InputError(f"must be at least 1, got {threads}", field="--threads")
        torch.set_num_threads(threads)
    device = torch.device(model.device)
    stages, heads = model.stages, model.heads
    k = len(stages)
    gen = torch.Generator().manual_seed(seed)
    make_inputs = getattr(model.module, "eenet_make_inputs", None)
    if callable(make_inputs):  # e.g. a text model: random token ids, input_shape = (tokens,)
        x = make_inputs(batch_size, tuple(input_shape), gen).to(device)
    else:
        x = torch.randn((batch_size, *input_shape), generator=gen).to(device)
    # one checked run first: a wrong --input-shape is bad input, not a crash
    from eenet_cli.modelspec import run_checked

    with torch.inference_mode():
        run_checked(model, x[:1], f"--input-shape {','.join(map(str, input_shape))}")
    flops = count_flops(stages, heads, x[:1])
    params = count_params(stages, heads)
    prefixes = [make_prefix(model.module, j) for j in range(k)]
    times = np.empty((k, repeats), dtype=np.float64)
    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        for _ in range(warmup):
            for j in range(k):
                prefixes[j](x)
        _sync(device)
        for r in range(repeats):
            for j in rng.permutation(k):
                run = prefixes[j]
                _sync(device)
                t0 = time.perf_counter()
                run(x)
                _sync(device)
                times[j, r] = (time.perf_counter() - t0) * 1e3
            if progress is not None:
                progress(1)
    res = ProfileResult(
        times_ms=[times[j] for j in range(k)],
        flops=flops,
        params=params,
        batch_size=batch_size,
        threads=torch.get_num_threads(),
        device=str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})",
        repeats=repeats,
        warmup=warmup,
        input_shape=tuple(input_shape),
    )
    return res


def costs_document(res: ProfileResult, *, unit: str = "ms", model: str | None = None, strict: bool = True) -> dict:
    """The costs JSON of SPEC §2.2. Raises :class:`WorkFailed` when the costs would not be
    strictly increasing (rather than silently fixing measured numbers)."""
    from eenet_cli.io import CREATED_BY, normalise_unit, unit_scale

    unit = normalise_unit(unit, "--unit")
    dim, factor = unit_scale(unit)
    stats_ms = {name: res.stat(name) for name in ("median", "p10", "p90", "mean")}
    if dim == "time":
        scale = 1e-3 / factor  # ms -> unit
        costs = [v * scale for v in stats_ms["median"]]
        stats = {name: [v * scale for v in vals] for name, vals in stats_ms.items()}
        what = "median latencies"
    else:
        costs = [f / factor for f in res.flops]
        stats = None
        what = "FLOP counts"
    if strict and not res.increasing(costs):
        shown = ", ".join(f"{v:.4g}" for v in costs)
        hint = (
            "a later exit measured no slower than an earlier one; re-run with more --repeats, --threads 1, on a quieter "
            "machine, or use --unit flops"
            if dim == "time"
            else "some exit adds no counted FLOPs (FlopCounterMode counts matmul/conv only); use a time unit"
        )
        raise WorkFailed(f"measured {what} are not strictly increasing ({shown} {unit}): {hint}; nothing written")
    doc: dict = {"format": "costs", "version": 1, "unit": unit, "costs": [_round(v) for v in costs]}
    if stats is not None:
        doc["stats"] = {name: [_round(v) for v in vals] for name, vals in stats.items()}
        doc["stats"]["repeats"] = res.repeats
        doc["stats"]["warmup"] = res.warmup
    else:
        doc["latency_ms"] = {name: [_round(v) for v in vals] for name, vals in stats_ms.items()}
        doc["latency_ms"]["repeats"] = res.repeats
        doc["latency_ms"]["warmup"] = res.warmup
    doc["flops"] = res.flops
    doc["params"] = res.params
    doc["device"] = res.device
    doc["batch_size"] = res.batch_size
    doc["threads"] = res.threads
    doc["input_shape"] = list(res.input_shape)
    doc["torch"] = torch.__version__
    if model:
        doc["model"] = model
    doc["created_by"] = CREATED_BY
    return doc


def _round(v: float) -> float:
    return float(f"{v:.6g}")


# --------------------------------------------------------------------------- policy runs


@dataclass
class PolicyRun:
    """Real adaptive inference over a dataset under a policy."""

    n: int
    correct: int
    exit_counts: np.ndarray
    seconds: float  # total wall time of the model + decisions (data loading excluded)
    batch_size: int
    per_batch_ms: list[float]
    by_exit_ms: list[list[float]] = field(default_factory=list)  # batch size 1: latency of each sample, by exit taken

    def by_exit_median(self) -> list[float | None]:
        return [float(np.median(t)) if t else None for t in self.by_exit_ms]

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.n, 1)

    @property
    def ms_per_sample(self) -> float:
        return 1e3 * self.seconds / max(self.n, 1)

    @property
    def exit_fractions(self) -> list[float]:
        return (self.exit_counts / max(self.n, 1)).tolist()


def run_policy(model: LoadedModel, policy: dict, data, *, warmup: int = 10, progress=None, scores: str = "logits") -> PolicyRun:
    """Run :class:`~eenet_cli.runtime.EarlyExitModel` over ``data`` and time it."""
    from eenet_cli.modelspec import run_checked
    from eenet_cli.runtime import EarlyExitModel

    if not model.staged:
        raise InputError("running a policy needs a staged model (stages and heads)", source=model.spec)
    ee = EarlyExitModel(model.module, policy, scores=scores)
    device = torch.device(model.device)
    k = model.num_exits or 0
    counts = np.zeros(k, dtype=np.int64)
    n = correct = 0
    total = 0.0
    per_batch: list[float] = []
    first = True
    batch_size = 0
    by_exit: list[list[float]] = [[] for _ in range(k)]
    pack = getattr(model.module, "eenet_pack_inputs", None)
    for x, y in data:
        if not isinstance(x, torch.Tensor):
            if not callable(pack):
                raise InputError(
                    "the runtime takes one input tensor per batch; this data gives a dict/tuple and the model has no "
                    "eenet_pack_inputs() to pack it",
                    source=data.spec,
                )
            x = pack(x)  # e.g. tokenised text -> [B, 2, T] (ids, mask)
        x = x.to(device)
        if first:
            with torch.inference_mode():
                outs = run_checked(model, x[:1], data.spec)
            c = outs[0].shape[1]
            if policy.get("num_classes", c) != c:
                raise InputError(f"policy is for {policy['num_classes']} classes, the model gives {c}", field="num_classes")
            for _ in range(warmup):
                ee.run(x[:1])
            first = False
            batch_size = int(x.shape[0])
        _sync(device)
        t0 = time.perf_counter()
        r = ee.run(x)
        _sync(device)
        dt = time.perf_counter() - t0
        total += dt
        per_batch.append(dt * 1e3)
        counts += np.bincount(r.exits.numpy(), minlength=k)
        if x.shape[0] == 1:
            by_exit[int(r.exits[0])].append(dt * 1e3)
        correct += int((r.preds == y.cpu()).sum())
        n += int(y.shape[0])
        if progress is not None:
            progress(int(y.shape[0]))
    if n == 0:
        raise InputError("holds no samples", source=data.spec, field="--data")
    return PolicyRun(n, correct, counts, total, batch_size, per_batch, by_exit if batch_size == 1 else [])
