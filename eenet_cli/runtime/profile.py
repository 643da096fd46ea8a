"""Measuring what each exit of a staged model costs (``eenet profile``).

Exit k's cost is that of a sample that stops at exit k (docs/spec.md §2.2): stages 0..k, heads
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

:func:`run_policy` (``eenet profile --policy``) runs a policy for real over a dataset,
several passes, timing every call, and re-measures every exit's prefix in the same passes
(interleaved with the calls), so the offline estimate sum_k f_k c_k can be computed from
costs measured under the same conditions as the realised latency (docs/runtime.md).

No printing and no files here: the command renders and writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from eenet_cli.core.thresholds import ACCEPT_ALL
from eenet_cli.errors import InputError, WorkFailed
from eenet_cli.runtime.batch import batch_len, batch_slice, batch_to
from eenet_cli.runtime.early_exit import EarlyExitModel
from eenet_cli.runtime.load import LoadedModel
from eenet_cli.runtime.run import run_checked

NOISE_LIMIT = 0.2  # (p90 - p10) / median above this is called noisy


_STATS = {
    "median": np.median,
    "mean": np.mean,
    "p10": lambda a: np.percentile(a, 10),
    "p90": lambda a: np.percentile(a, 90),
}


def _stat(name: str, timings) -> list[float]:
    """One statistic (median, mean, p10, p90) of each exit's timings, in ms."""
    return [float(_STATS[name](t)) for t in timings]


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
        return _stat(name, self.times_ms)

    def noisy_exits(self, limit: float = NOISE_LIMIT) -> list[int]:
        med, p10, p90 = self.stat("median"), self.stat("p10"), self.stat("p90")
        return [k for k in range(self.num_exits) if med[k] > 0 and (p90[k] - p10[k]) / med[k] > limit]

    def increasing(self, values: list[float]) -> bool:
        return all(b > a for a, b in zip(values, values[1:])) and all(v > 0 for v in values)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MIN_SLOTS_PER_EXIT = 10  # in-run prefix timings per exit and pass, at least
NEVER = 1e300  # a threshold no score reaches: the decision is still made, and says "go on"
ALWAYS = ACCEPT_ALL  # a threshold every score reaches (the one the fitters use to stop everyone)


def forced_exit_policy(num_exits: int, k: int, like: dict | None = None) -> dict:
    """A policy that stops every sample at exit ``k`` and makes the exit decision (the
    score and its comparison with a threshold) at each head up to ``k``, as a real policy
    would for a sample that stops there.

    By default the scorer is max-prob and every exit before ``k`` decides (its threshold
    is a number no score reaches; a null threshold would let the runtime skip a max-prob
    decision it does not need). With ``like`` (a policy), its scorer is used and its null
    thresholds are kept, so the decisions cost what they cost under that policy.
    """
    scorer = like["scorer"] if like is not None else {"type": "maxprob"}
    given = like["thresholds"] if like is not None else [0.0] * num_exits
    thresholds: list = [None if given[j] is None else NEVER for j in range(k)]
    thresholds += [ALWAYS] + [None] * (num_exits - k - 1)
    thresholds[-1] = None  # the last exit stops every sample without a threshold
    doc = {"num_exits": num_exits, "thresholds": thresholds, "scorer": scorer}
    if like is not None and "num_classes" in like:
        doc["num_classes"] = like["num_classes"]
    return doc


def make_prefix(module: nn.Module, k: int):
    """A callable that runs exactly what the runtime runs for a sample stopping at exit k:
    stages 0..k, heads 0..k and a max-prob exit decision at each of those heads
    (:class:`~eenet_cli.runtime.EarlyExitModel` with a policy that stops at k)."""
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
    """The costs JSON of docs/spec.md §2.2. Raises :class:`WorkFailed` when the costs would not be
    strictly increasing (rather than silently fixing measured numbers)."""
    from eenet_cli.artifacts.costs import normalise_unit, unit_scale
    from eenet_cli.artifacts.files import CREATED_BY

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
    """Real adaptive inference over a dataset under a policy, timed over several passes,
    with every exit's prefix cost re-measured in the same passes (see :func:`run_policy`).

    A *call* is one ``EarlyExitModel.run`` on one batch of the data: one sample at batch
    size 1. All times are milliseconds per call unless a name says per sample.
    """

    n: int
    correct: int
    exit_counts: np.ndarray  # [K] exits taken (first pass)
    batch_size: int
    repeats: int  # passes over the data
    warmup: int
    call_ms: np.ndarray  # [repeats, calls] latency of each call in each pass
    call_sizes: np.ndarray  # [calls] samples per call
    call_exits: list[np.ndarray]  # per call, the exit each of its samples took (first pass)
    slot_ms: np.ndarray  # [repeats, slots] in-run prefix timings, ms per call: slot s times exit slot_exits[s]
    slot_exits: np.ndarray  # [slots] the exit whose prefix each slot times
    prefix_batch_size: int  # samples per prefix call
    scorer: str  # the decision timed at each head, in both the calls and the prefixes
    decisions_stable: bool = True  # every pass took the same exits

    @property
    def num_exits(self) -> int:
        return len(self.exit_counts)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.n, 1)

    @property
    def exit_fractions(self) -> list[float]:
        return (self.exit_counts / max(self.n, 1)).tolist()

    @property
    def call_median_ms(self) -> np.ndarray:
        """Each call's median latency over the passes."""
        return np.median(self.call_ms, axis=0)

    @property
    def realised_ms_per_sample(self) -> float:
        """The realised average latency: the mean over samples of each sample's median over
        the passes (at batch size > 1, each batch's median over the passes, summed, per sample)."""
        return float(self.call_median_ms.sum() / max(self.n, 1))

    @property
    def raw_mean_ms_per_sample(self) -> float:
        """Total timed time over all passes / (passes x samples): the plain mean, outliers included."""
        return float(self.call_ms.sum() / max(self.n * self.repeats, 1))

    def per_sample_percentiles(self, qs=(10, 50, 90)) -> list[float]:
        """Percentiles of the per-sample latency of every timed call of every pass
        (at batch size > 1, a call's latency divided by its samples)."""
        per = (self.call_ms / self.call_sizes[None, :]).ravel()
        return [float(v) for v in np.percentile(per, list(qs))]

    def _by_exit(self, values: np.ndarray, reduce) -> list[float | None]:
        """``reduce`` of ``values[..., call]`` over the calls whose (single) sample took exit k."""
        if self.batch_size != 1:
            return []
        exits = np.array([int(e[0]) for e in self.call_exits])
        return [float(reduce(values[..., exits == k])) if (exits == k).any() else None for k in range(self.num_exits)]

    def by_exit_median(self) -> list[float | None]:
        """Batch size 1: the median of every timing (all passes) of the samples that took exit k."""
        return self._by_exit(self.call_ms, np.median)

    def by_exit_mean_of_medians(self) -> list[float | None]:
        """Batch size 1: the mean over the samples that took exit k of their median over the passes."""
        return self._by_exit(self.call_median_ms, np.mean)

    @property
    def prefix_ms(self) -> list[np.ndarray]:
        """Per exit: every in-run timing of its prefix (all slots, all passes)."""
        return [self.slot_ms[:, self.slot_exits == j].ravel() for j in range(self.num_exits)]

    def prefix_stat(self, name: str) -> list[float]:
        return _stat(name, self.prefix_ms)

    def prefix_mean_of_medians(self) -> list[float]:
        """Per exit: the realised statistic applied to the prefix slots (each slot's median over
        the passes, averaged over the slots of that exit)."""
        med = np.median(self.slot_ms, axis=0)
        return [float(med[self.slot_exits == j].mean()) for j in range(self.num_exits)]

    @property
    def measured_costs(self) -> list[float]:
        """Per exit: the median in-run prefix latency, ms per call (the statistic of ``eenet profile``)."""
        return self.prefix_stat("median")

    @property
    def estimate_ms_per_sample(self) -> float:
        """sum_k fraction_k * c_k with this run's median prefix costs, per sample."""
        return float(np.dot(self.exit_fractions, self.measured_costs) / self.prefix_batch_size)

    @property
    def estimate_same_statistic_ms_per_sample(self) -> float:
        """sum_k fraction_k * c_k with c_k = :meth:`prefix_mean_of_medians`, per sample."""
        return float(np.dot(self.exit_fractions, self.prefix_mean_of_medians()) / self.prefix_batch_size)


NOISY_SPREAD = 0.10  # (p75 - p25) / median of the block ratios above this: too noisy to tell


def _quartile_spread(values: np.ndarray) -> float:
    med = float(np.median(values))
    if not np.isfinite(med) or med <= 0:
        return float("inf")
    q75, q25 = np.percentile(values, [75, 25])
    return float((q75 - q25) / med)


def compare_blocks(run: PolicyRun, given_costs_ms: list[float] | None = None, given_batch_size: int = 1) -> dict:
    """The early-exit run against the full model and the offline estimate, block by block.

    A *block* is one pass over the data. In each pass every call of the policy is timed
    next to a prefix slot (:func:`run_policy`), so the full model (the last exit's prefix, on
    a full batch of real inputs) and every exit's prefix are timed interleaved with the
    early-exit calls, in the same process and moments. Per block, with the same statistic on
    both sides (the mean of that pass's timings, per sample):

    * realised = the early-exit calls' time / their samples (at batch size B > 1, the calls
      of B samples only, when there are any, so that a smaller last batch does not count);
    * full = the last exit's prefix time / its samples;
    * estimate = sum_k f_k c_k, c_k = exit k's prefix time / its samples, f_k the share of
      those samples that took exit k;
    * speed-up = full / realised, ideal = full / estimate (= c_K / expected cost), and
      realised / estimate.

    The medians over the blocks are the figures; the spread of the blocks says whether the
    machine was steady enough to tell: ``noisy`` when there are fewer than 3 blocks, or the
    interquartile range of realised / estimate or of the speed-up exceeds ``NOISY_SPREAD`` of
    its median (the full model's drift between blocks is reported, not judged: each block
    compares like with like). ``given_costs_ms`` (ms per call of
    ``given_batch_size`` samples) gives the offline estimate from the given costs beside it.
    """
    k = run.num_exits
    b = run.batch_size
    full_calls = run.call_sizes == b if b > 1 and (run.call_sizes == b).any() else np.ones(len(run.call_sizes), dtype=bool)
    samples = int(run.call_sizes[full_calls].sum())
    counts = np.bincount(np.concatenate([run.call_exits[i] for i in np.flatnonzero(full_calls)]), minlength=k)
    frac = counts / max(samples, 1)
    realised = run.call_ms[:, full_calls].sum(axis=1) / max(samples, 1)  # [passes]
    per = np.stack([run.slot_ms[:, run.slot_exits == j].mean(axis=1) for j in range(k)], axis=1) / run.prefix_batch_size  # [passes, K]
    full = per[:, -1]
    estimate = per @ frac
    ratio = realised / estimate
    speedup = full / realised
    ideal = full / estimate
    med = {name: float(np.median(v)) for name, v in (("realised", realised), ("full", full), ("estimate", estimate),
                                                     ("ratio", ratio), ("speedup", speedup), ("ideal", ideal))}
    spread_ratio = _quartile_spread(ratio)
    spread_speedup = _quartile_spread(speedup)
    drift = float((full.max() - full.min()) / med["full"]) if med["full"] > 0 else float("inf")
    blocks = len(realised)
    # a machine whose speed moves between blocks is fine (each block compares like with like);
    # blocks that disagree with each other are not
    noisy = blocks < 3 or spread_ratio > NOISY_SPREAD or spread_speedup > NOISY_SPREAD
    reasons = []
    if blocks < 3:
        reasons.append(f"only {blocks} block(s); 3 or more (--repeats) are needed to tell")
    if spread_ratio > NOISY_SPREAD:
        reasons.append(f"realised/estimate varied by {spread_ratio:.0%} (interquartile) over the blocks")
    if spread_speedup > NOISY_SPREAD:
        reasons.append(f"the speed-up varied by {spread_speedup:.0%} (interquartile) over the blocks")
    out: dict = {
        "batch_size": b,
        "blocks": blocks,
        "samples": samples,
        "exit_fractions": [float(v) for v in frac],
        "statistic": "per block (one pass): mean time per sample of that pass's timings; the figures are medians over the blocks",
        "realised_ms_per_sample": med["realised"],
        "full_model_ms_per_sample": med["full"],
        "estimate_ms_per_sample": med["estimate"],
        "realised_over_estimate": med["ratio"],
        "speedup": med["speedup"],
        "ideal_speedup": med["ideal"],
        "speedup_over_ideal": med["speedup"] / med["ideal"] if med["ideal"] > 0 else None,
        "per_block": {
            "realised_ms_per_sample": [_r6(v) for v in realised],
            "full_model_ms_per_sample": [_r6(v) for v in full],
            "estimate_ms_per_sample": [_r6(v) for v in estimate],
            "realised_over_estimate": [_r6(v) for v in ratio],
            "speedup": [_r6(v) for v in speedup],
        },
        "spread": {"realised_over_estimate": _r6(spread_ratio), "speedup": _r6(spread_speedup), "full_model_drift": _r6(drift)},
        "noisy": bool(noisy),
        "verdict": "too noisy to tell: " + "; ".join(reasons) if noisy else "steady enough to tell",
    }
    if given_costs_ms is not None and len(given_costs_ms) == k:
        c = np.asarray(given_costs_ms, dtype=np.float64) / max(int(given_batch_size), 1)
        offline = float(c @ frac)
        out["offline_estimate_ms_per_sample"] = offline
        out["realised_over_offline_estimate"] = med["realised"] / offline if offline > 0 else None
        out["ideal_speedup_given_costs"] = float(c[-1] / offline) if offline > 0 else None
        out["speedup_over_ideal_given_costs"] = med["speedup"] / out["ideal_speedup_given_costs"] if offline > 0 else None
    return out


def _r6(v: float) -> float:
    return float(f"{float(v):.6g}")


def _prefix_inputs(xs: list, batch_size: int) -> list:
    """The inputs the prefixes are timed on: real inputs of the data, one call's worth each
    (single samples at batch size 1; the full batches otherwise, or the largest if none is)."""
    if batch_size == 1:
        out = []
        for x in xs:
            out.extend(batch_slice(x, slice(i, i + 1)) for i in range(batch_len(x)))
        return out
    full = [x for x in xs if batch_len(x) == batch_size]
    return full or [max(xs, key=batch_len)]


def run_policy(
    model: LoadedModel,
    policy: dict,
    data,
    *,
    repeats: int = 5,
    warmup: int = 10,
    seed: int = 0,
    progress=None,
    scores: str = "logits",
) -> PolicyRun:
    """Run :class:`~eenet_cli.runtime.EarlyExitModel` over ``data`` ``repeats`` times and
    time every call, re-measuring each exit's prefix cost in the same passes.

    The data is read once into memory (on the model's device), so data loading is never
    timed. Each pass runs the calls in a fresh seeded order, and pairs each call with one
    *prefix slot* (or a few, when there are fewer than ``MIN_SLOTS_PER_EXIT`` calls per
    exit): the runtime with a policy that stops every sample at the slot's exit (the
    slots' exits are balanced over the exits), timed on the slot's real input of the data,
    just before or just after the call, at random. The prefix uses the policy's own
    scorer, so both sides time exactly the same work: stages and heads up to the exit
    taken and the policy's decision at each of those heads (``EarlyExitModel.run``
    between two clock reads, nothing else; bookkeeping runs outside the clock). Both run
    in the same process, threads and batch size, after the same warm-up (``warmup``
    rounds of one call and every prefix once).
    """
    if not model.staged:
        raise InputError("running a policy needs a staged model (stages and heads)", source=model.spec)
    if repeats < 1:
        raise InputError(f"must be at least 1, got {repeats}", field="--repeats")
    if warmup < 0:
        raise InputError(f"must be 0 or more, got {warmup}", field="--warmup")
    ee = EarlyExitModel(model.module, policy, scores=scores)
    device = torch.device(model.device)
    k = model.num_exits or 0
    pack = getattr(model.module, "eenet_pack_inputs", None)
    xs: list = []
    ys: list[torch.Tensor] = []
    for x, y in data:
        if not isinstance(x, torch.Tensor) and callable(pack):
            x = pack(x)  # e.g. tokenised text -> [B, 2, T] (ids, mask)
        # otherwise a dict/tuple batch goes to the first stage as it is (the runtime re-batches any nesting)
        if batch_len(x) == 0:
            continue
        x = batch_to(x, device)
        if not xs:
            with torch.inference_mode():
                outs = run_checked(model, batch_slice(x, slice(0, 1)), data.spec)
            c = outs[0].shape[1]
            if policy.get("num_classes", c) != c:
                raise InputError(f"policy is for {policy['num_classes']} classes, the model gives {c}", field="num_classes")
        xs.append(x)
        ys.append(y.cpu())
    n = sum(int(y.shape[0]) for y in ys)
    if n == 0:
        raise InputError("holds no samples", source=data.spec, field="--data")
    batch_size = int(max(batch_len(x) for x in xs))
    sizes = np.array([batch_len(x) for x in xs], dtype=np.int64)
    calls = len(xs)
    scorer = policy["scorer"]
    prefixes = [EarlyExitModel(model.module, forced_exit_policy(k, j, policy), scores=scores).run for j in range(k)]
    prefix_x = _prefix_inputs(xs, batch_size)
    prefix_batch_size = int(batch_len(prefix_x[0]))
    rng = np.random.default_rng(seed)
    # prefix slots: slot s times exit slot_exits[s]'s prefix on input slot_inputs[s] once per
    # pass, next to call s % calls, so a slot is a "virtual sample" that stops at a known
    # exit; at least MIN_SLOTS_PER_EXIT slots per exit when there are few calls
    slots = max(calls, MIN_SLOTS_PER_EXIT * k)
    slot_exits = rng.permutation(np.arange(slots) % k)
    slot_inputs = rng.integers(len(prefix_x), size=slots)
    paired = [list(range(i, slots, calls)) for i in range(calls)]
    call_ms = np.empty((repeats, calls), dtype=np.float64)
    slot_ms = np.empty((repeats, slots), dtype=np.float64)
    exits: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * calls
    correct = 0
    stable = True

    def timed(fn, x):
        _sync(device)
        t0 = time.perf_counter()
        r = fn(x)
        _sync(device)
        return r, (time.perf_counter() - t0) * 1e3

    with torch.inference_mode():
        for w in range(warmup):
            ee.run(xs[w % calls])
            for j in range(k):
                prefixes[j](prefix_x[w % len(prefix_x)])
        for p in range(repeats):
            order = rng.permutation(calls)
            before = rng.random(slots) < 0.5  # a slot runs just before its call or just after, at random
            for i in order:
                for sl in paired[i]:
                    if before[sl]:
                        slot_ms[p, sl] = timed(prefixes[slot_exits[sl]], prefix_x[slot_inputs[sl]])[1]
                r, call_ms[p, i] = timed(ee.run, xs[i])
                for sl in paired[i]:
                    if not before[sl]:
                        slot_ms[p, sl] = timed(prefixes[slot_exits[sl]], prefix_x[slot_inputs[sl]])[1]
                e = r.exits.cpu().numpy()
                if p == 0:
                    exits[i] = e
                    correct += int((r.preds.cpu() == ys[i]).sum())
                elif not np.array_equal(e, exits[i]):
                    stable = False
                if progress is not None:
                    progress(int(sizes[i]))
    counts = np.bincount(np.concatenate(exits), minlength=k)
    return PolicyRun(
        n=n,
        correct=correct,
        exit_counts=counts,
        batch_size=batch_size,
        repeats=repeats,
        warmup=warmup,
        call_ms=call_ms,
        call_sizes=sizes,
        call_exits=exits,
        slot_ms=slot_ms,
        slot_exits=slot_exits,
        prefix_batch_size=prefix_batch_size,
        scorer=str(scorer.get("type")),
        decisions_stable=stable,
    )
