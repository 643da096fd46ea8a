"""Learning EENet's exit policy (paper §3.2, Algorithm 1) with torch, exported to numpy.

The model is the paper's, per exit k (0-based) with D_k = C + 3 + k inputs (class
probabilities, max-prob, entropy, vote, then the sigmoid utilities of the k earlier exits,
computed in the same forward pass exactly as :mod:`eenet_cli.core.eenet_scorer` does):
``s = leaky_relu(W_sh x + b, 0.01)``, utility logit ``u = w_g·s + b_g`` (q̂ = sigmoid(u)),
assignment logit ``ã = w_h·s + b_h``, r̂ = softmax over exits of ã (eq. 8-10). Hidden
size H_k = max(8, ceil(0.5·D_k)). Targets q (eq. 3) and r (eq. 4). Loss
``L = L_g + α·L_budget + β·L_CE``: L_g is eq. 11 read as the ordinary binary cross-entropy
(minimised), computed with BCE-with-logits on u, weighted by the survival weights of eq. 13
computed from r̂ under ``no_grad``; L_budget = |B − mean Σ_k r̂ c_k| / B (eq. 14); L_CE is
eq. 15. Training runs in float32 on features computed once; the weights are exported as
plain float lists into the scorer JSON, and everything downstream (the exit distribution
p_k = mean softmax(ã), the thresholds, applying the policy) uses the numpy scorer, so a
policy reproduces its validation figures exactly. Budgets above c_K train against c_K.

Choices the paper leaves open, and the measurements behind every default
-----------------------------------------------------------------------------
Measured with ``scripts/tune_eenet.py``-style runs: synthetic predictions
(:func:`eenet_cli.synthetic.make_predictions`, 10,000 rows = ~5,000 val + ~5,000 test,
K = 4, costs 1..4) for C ∈ {10, 100} × miscalibration ∈ {0, 1} × 5 budgets in (c_1, c_K) ×
3 data seeds = 60 cells. "Δ" is TEST accuracy of EENet (Algorithm 1 quotas) minus the
better of the max-prob / entropy geometric baselines, in points: mean over the 60 cells
and the worst cell.

* Initialisation ("spline", default): the shared layer starts as torch's default Linear
  range U(±1/sqrt(D_k)), except that its first min(H_k/2, 4) units are hinge functions of
  max-prob, ``leaky_relu(max_prob − κ_i)`` with κ = 0 and the quartile knots of max-prob;
  the utility head starts as a logistic regression (Newton, float64) of q on those units,
  zero weight on the other units. So the utility starts as a calibrated monotone function
  of max-prob (its ranking is max-prob's) and training only adds what the other inputs are
  worth. The assignment head starts with zero weights and biases log p⁰, where p⁰ ∝
  mean(r) · exp(−λ c̃) is the distribution closest to the mean target r whose expected cost
  is the budget, so L_budget is ~0 and every term is finite at step 0 (BCE-with-logits
  and log-softmax are finite for any logits). Measured: plain prior init (no hinge units)
  Δ mean +1.21 / worst −3.96 (C=100 calibrated: −1.65 on average, the net never
  recovers max-prob's ranking from 100 class inputs); spline init Δ +1.77 / −0.96.
* Early stopping: 20 % of the validation rows (seeded) are held out; every 5 steps (less
  often with mini-batches, so an evaluation costs at most about one step) the held-out
  utility loss L_g is measured, training stops after ``patience`` = 50 steps without
  improvement (at least 50, at most 500 steps) and the best weights are restored. The
  other 80 % are trained on; p and the thresholds use all rows. Measured: without the
  hold-out (train on all rows, stop on the training loss) Δ +0.91 / −5.50 — the class
  inputs overfit badly; stopping on the held-out total loss instead of L_g made the
  utility ranking budget-dependent and worse (C=100 calibrated, held-out AUC averaged
  over exits 0.7912 vs 0.7997).
* Optimiser: AdamW (decoupled weight decay 0.01 on the weight matrices, none on
  biases), lr 1e-2, full batch. The paper's settings (torch init, α = 0.1, β = 1e-3, Adam
  with coupled L2 0.01, lr 3e-5, 500 steps) barely move from the initialisation: p stays
  near uniform whatever the budget, Δ −12.75 / −33.5. Coupled L2
  (``decoupled_weight_decay=False``) Δ +0.74 / −1.12 vs decoupled +1.77 / −0.96.
  lr 3e-3 gave Δ +1.75 / −0.88 in ~2x the steps; 1e-2 converges in 50-300 steps.
* α = 1, β = 0.01. With the tilted initial p, β mostly decides how far training moves p
  away from p⁰ towards the per-sample CE optimum: β = 1 Δ +1.48 / −1.44, β = 0.1
  +1.66 / −0.90, β = 0.01 +1.77 / −0.96, the paper's α = 0.1, β = 1e-3 +1.72 / −1.04.
  (With a uniform initial p, small β leaves p wherever the budget term pushes it first;
  the tilted p⁰ is what makes small β safe.)
* Batching: full batch while one step's first-layer work N·Σ D_k·H_k is at most 1.5e9
  multiply-adds, otherwise mini-batches of 1.5e9 / Σ D_k·H_k rows (at least 256),
  reshuffled every epoch with the seeded generator. 25,000 × 5 exits × 1,000 classes gives
  batches of ~600 rows.
* Previous utilities b_k enter later exits detached (``detach_previous``): each utility
  head learns its own exit's correctness; the numbers fed forward are the same as the numpy
  scorer's.
* Determinism: parameters from a ``torch.Generator`` seeded with ``seed``, the split and
  batches from ``numpy.random.default_rng(seed)``, one torch thread (restored afterwards).
  One thread is also the fastest choice on a shared 2-core machine: measured, OpenMP with
  2 threads was ~4x slower than 1 while other processes used the CPUs. (On an idle
  machine 1 and 2 threads gave bit-identical weights for a C=100 problem; across thread
  counts in general this is not promised.)

Results with these defaults (``python scripts/tune_eenet.py``, data seed 0): Δ per
budget averaged over the 4 datasets +1.11 / +1.57 / +2.23 / +2.74 / +0.94, worst cell
−0.76 (C=100 calibrated, where max-prob is already the right score); eenet-search (its
rule chosen by 5-fold cross-validation) worst cell −0.18, and −0.16 / −0.35 on data seeds
1 / 2. On data seeds 1 and 2 the means hold (+1.77, +1.91) but single calibrated
cells reach −1.19 and the lowest budget's mean +0.47: on calibrated predictions EENet
ties max-prob, and one 5,000-row test split moves a cell by ±0.5-1 point.
Speed (2 cores, one thread): 5,000 rows × 4 exits × 100 classes trains in 1-4 s (plus
~2 s to import torch once); 25,000 × 5 × 1,000 in ~52 s with 2.0 GB peak RSS (~80 s
while other jobs shared the CPUs).
"""

from __future__ import annotations

import math
import os
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

if "torch" not in sys.modules:
    # MKL picks its kernels by CPU, and float32 training then rounds differently on an
    # AVX-512 machine than on an AVX2 one, enough to move a few samples' exits. The
    # CPU-independent kernels make the same fit give the same bytes on any x86 machine
    # with the same MKL (and cost nothing measurable at this network's size). A user's
    # own MKL_CBWR wins; once torch is imported (a notebook) it is too late to choose.
    # torch's own vector kernels are capped at AVX2 for the same reason (AVX-512 and AVX2
    # machines then agree).
    os.environ.setdefault("MKL_CBWR", "COMPATIBLE")
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")

from eenet_cli.core.eenet_scorer import eenet_forward, eenet_utilities
from eenet_cli.core.measures import ExitFeatures
from eenet_cli.core.thresholds import (
    Ranking,
    fit_distribution,
    fit_geometric,
    search_thresholds,
    within_budget,
)
from eenet_cli.errors import BudgetError, InputError

FEATURES = ["class_probs", "max_prob", "entropy", "vote", "previous_utilities"]
NEGATIVE_SLOPE = 0.01

Progress = Callable[[int, int, dict], None]


@dataclass
class EENetHyper:
    """Training settings; every default is a measured choice (see the module docstring)."""

    hidden_ratio: float = 0.5  # D_h = max(min_hidden, ceil(hidden_ratio * D_k))
    min_hidden: int = 8
    alpha: float = 1.0  # weight of L_budget
    beta: float = 0.01  # weight of L_CE
    lr: float = 1e-2
    weight_decay: float = 0.01
    decoupled_weight_decay: bool = True  # AdamW; False = L2 added to the gradient (torch Adam)
    max_steps: int = 500
    min_steps: int = 50
    patience: int = 50  # steps without improvement of the held-out utility loss
    eval_every: int = 5
    min_delta: float = 1e-5
    holdout: float = 0.2  # share of the validation rows held out for early stopping
    batch_size: int | None = None  # None: full batch unless a step would exceed max_batch_work
    max_batch_work: float = 1.5e9  # multiply-adds of the first layers per step (auto mini-batch)
    min_batch: int = 256
    init: str = "spline"  # "spline" | "prior" | "torch"
    spline_units: int = 4
    detach_previous: bool = True
    num_threads: int | None = 1
    progress_every: int = 10

    def hidden_sizes(self, num_classes: int, num_exits: int) -> list[int]:
        return [max(self.min_hidden, math.ceil(self.hidden_ratio * (num_classes + 3 + k))) for k in range(num_exits)]


@dataclass
class EENetResult:
    """A trained scorer (numpy JSON format), its exit distribution and how training went."""

    scorer: dict
    distribution: np.ndarray
    history: dict
    hyperparameters: dict
    seed: int = 0
    budget: float = 0.0
    seconds: float = 0.0
    extras: dict = field(default_factory=dict, repr=False)


def _check_inputs(features: ExitFeatures, costs, budget: float) -> np.ndarray:
    if features.labels is None:
        raise InputError("EENet needs labels to learn a policy", field="label")
    n, k = features.num_samples, features.num_exits
    if n < 2:
        raise InputError(f"EENet needs at least 2 validation samples, got {n}")
    costs = np.asarray(costs, dtype=np.float64)
    if costs.shape != (k,):
        raise InputError(f"expected {k} costs (one per exit), got {costs.size}", field="costs")
    if not np.all(np.isfinite(costs)) or np.any(costs <= 0) or np.any(np.diff(costs) <= 0):
        raise InputError("costs must be positive and strictly increasing", field="costs")
    budget = float(budget)
    if not math.isfinite(budget) or not within_budget(costs[0], budget):
        raise BudgetError(f"budget {budget:g} is below the cost of the first exit ({costs[0]:g})")
    return costs


INITS = ("spline", "prior", "torch")


def _check_hyper(hyper: EENetHyper) -> None:
    if hyper.init not in INITS:
        raise InputError(f"unknown initialisation {hyper.init!r}; expected one of {', '.join(INITS)}", field="init")
    if not 0.0 <= hyper.holdout < 1.0:
        raise InputError(f"holdout must be in [0, 1), got {hyper.holdout}", field="holdout")
    for name in ("lr", "hidden_ratio", "max_batch_work"):
        if not getattr(hyper, name) > 0:
            raise InputError(f"{name} must be positive, got {getattr(hyper, name)}", field=name)
    for name in ("alpha", "beta", "weight_decay"):
        if not getattr(hyper, name) >= 0:
            raise InputError(f"{name} must be >= 0, got {getattr(hyper, name)}", field=name)
    if hyper.max_steps < 0 or hyper.min_steps < 0 or hyper.patience < 1 or hyper.eval_every < 1:
        raise InputError("max_steps and min_steps must be >= 0, patience and eval_every >= 1", field="steps")


def targets(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 3 and eq. 4: q = correctness per exit; r = uniform over the correct exits, or
    uniform over all exits when none is correct.

    >>> q, r = targets(np.array([[False, True, True], [False, False, False]]))
    >>> r.tolist()
    [[0.0, 0.5, 0.5], [0.3333333333333333, 0.3333333333333333, 0.3333333333333333]]
    """
    correct = np.asarray(correct, dtype=bool)
    k = correct.shape[1]
    n_ok = correct.sum(axis=1, keepdims=True)
    r = np.where(n_ok > 0, correct / np.maximum(n_ok, 1), 1.0 / k)
    return correct.astype(np.float64), r


def tilted_distribution(base: np.ndarray, costs: np.ndarray, budget: float) -> np.ndarray:
    """``p ∝ base · exp(-λ c̃)`` (c̃ = costs scaled to [0, 1]) with ``Σ p c = budget``.

    The distribution closest to ``base`` (in KL) whose expected cost is the budget; used to
    initialise the assignment heads. Budgets outside ``[c_1, c_K]`` give the end points.
    """
    costs = np.asarray(costs, dtype=np.float64)
    logb = np.log(np.clip(np.asarray(base, dtype=np.float64), 1e-12, None))
    span = costs[-1] - costs[0]
    scaled = (costs - costs[0]) / span if span > 0 else np.zeros_like(costs)

    def dist(lam: float) -> np.ndarray:
        z = logb - lam * scaled
        z = np.exp(z - z.max())
        return z / z.sum()

    lo, hi = -500.0, 500.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if dist(mid) @ costs > budget:
            lo = mid
        else:
            hi = mid
    return dist(hi)


def _logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-4, iters: int = 50) -> tuple[np.ndarray, float]:
    """Damped Newton for a small ridge-penalised logistic regression, in float64.

    The coefficients are pulled towards 0 and the intercept towards the smoothed base rate,
    so an exit that is always (or never) right gets a large but finite utility.
    """
    n, d = x.shape
    xa = np.concatenate([x, np.ones((n, 1))], axis=1)
    rate = (float(y.sum()) + 0.5) / (n + 1.0)
    centre = np.zeros(d + 1)
    centre[-1] = math.log(rate / (1 - rate))
    beta = centre.copy()
    reg = np.full(d + 1, l2 * n)
    for _ in range(iters):
        p = 0.5 * (1.0 + np.tanh(0.5 * (xa @ beta)))
        grad = xa.T @ (p - y) + reg * (beta - centre)
        hess = (xa * (p * (1 - p))[:, None]).T @ xa + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        big = np.abs(step).max()
        if big > 5.0:
            step *= 5.0 / big
        beta -= step
        if big < 1e-9:
            break
    beta = np.clip(beta, -50.0, 50.0)
    return beta[:-1], float(beta[-1])


def _auto_batch(n_fit: int, row_work: int, hyper: EENetHyper) -> int:
    if hyper.batch_size:
        return max(1, min(n_fit, int(hyper.batch_size)))
    if n_fit * row_work <= hyper.max_batch_work:
        return n_fit
    return max(1, min(n_fit, max(hyper.min_batch, int(hyper.max_batch_work // row_work))))


def train_eenet(
    features: ExitFeatures,
    costs,
    budget: float,
    *,
    seed: int = 0,
    hyper: EENetHyper | None = None,
    progress: Progress | None = None,
) -> EENetResult:
    """Learn the utility and assignment heads of eq. 8-10 on validation features.

    Returns the scorer in the numpy JSON format of :mod:`eenet_cli.core.eenet_scorer`
    and the exit distribution ``p_k = mean softmax(assignment logits)`` computed by the
    numpy scorer on all rows of ``features``.
    """
    import torch

    hyper = hyper or EENetHyper()
    costs = _check_inputs(features, costs, budget)
    _check_hyper(hyper)
    t_start = time.perf_counter()
    n, k, c = features.probs.shape
    train_budget = float(min(float(budget), costs[-1]))
    hidden = hyper.hidden_sizes(c, k)
    from eenet_cli.memory import check_memory

    # the network (weights, gradients, two Adam moments, float32) and its float32 inputs
    weights = sum(h * (c + 3 + j + 3) for j, h in enumerate(hidden))
    check_memory(4 * (4 * weights + 2 * n * k * (c + 3 + k)), f"EENet training on {n} rows x {k} exits x {c} classes")
    threads = int(hyper.num_threads or min(2, os.cpu_count() or 1))

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trainer = _Trainer(features, costs, train_budget, hidden, hyper, int(seed))
        history = trainer.run(progress)
        scorer = trainer.export()
        torch_utilities = trainer.torch_utilities
        del trainer  # frees the float32 copies of the inputs before the numpy pass
    finally:
        torch.set_num_threads(prev_threads)
    # one numpy pass gives both the utilities (thresholds) and p (as assignment_distribution)
    util, assign = eenet_forward(scorer, features)
    assign = assign - assign.max(axis=1, keepdims=True)
    r_hat = np.exp(assign)
    r_hat /= r_hat.sum(axis=1, keepdims=True)
    dist = r_hat.mean(axis=0)
    history["expected_cost"] = float(dist @ costs)
    hp = asdict(hyper)
    hp["hidden_sizes"] = hidden
    hp["num_threads"] = threads
    hp["train_budget"] = train_budget
    return EENetResult(
        scorer=scorer,
        distribution=dist,
        history=history,
        hyperparameters=hp,
        seed=int(seed),
        budget=float(budget),
        seconds=time.perf_counter() - t_start,
        extras={
            "torch_utilities": torch_utilities,
            "numpy_utilities": util,
            "features_ref": weakref.ref(features),
        },
    )


class _Adam:
    """Adam (Kingma & Ba) with coupled L2 or decoupled (AdamW) weight decay, β = (0.9, 0.999),
    ε = 1e-8, the same update as ``torch.optim.Adam``/``AdamW``.

    Written out because constructing a ``torch.optim`` optimiser imports ``torch._dynamo``,
    which costs about 2 s of start-up on every ``eenet fit`` -- as much as training a
    5,000-row policy. The update runs on a handful of small tensors, so a plain loop is fine.
    """

    def __init__(self, torch, groups, *, lr: float, decoupled: bool, betas=(0.9, 0.999), eps: float = 1e-8):
        self.torch = torch
        self.groups = [(list(params), float(wd)) for params, wd in groups]
        self.lr, self.decoupled, self.eps = float(lr), bool(decoupled), float(eps)
        self.b1, self.b2 = betas
        self.t = 0
        self.state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for params, _ in self.groups for p in params}

    def zero_grad(self) -> None:
        for params, _ in self.groups:
            for p in params:
                p.grad = None

    def step(self) -> None:
        torch = self.torch
        self.t += 1
        c1 = 1.0 - self.b1**self.t
        c2 = math.sqrt(1.0 - self.b2**self.t)
        with torch.no_grad():
            for params, wd in self.groups:
                for p in params:
                    g = p.grad
                    if g is None:
                        continue
                    if wd and self.decoupled:
                        p.mul_(1.0 - self.lr * wd)
                    elif wd:
                        g = g.add(p, alpha=wd)
                    m, v = self.state[id(p)]
                    m.lerp_(g, 1.0 - self.b1)
                    v.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
                    denom = (v.sqrt() / c2).add_(self.eps)
                    p.addcdiv_(m, denom, value=-self.lr / c1)


class _Trainer:
    """The torch side: data as float32 tensors, per-exit weights, the loss, the loop."""

    def __init__(self, features, costs, budget, hidden, hyper: EENetHyper, seed: int):
        import torch

        self.torch = torch
        self.hyper = hyper
        self.budget = budget
        self.hidden = hidden
        n, k, c = features.probs.shape
        self.n, self.k, self.c = n, k, c
        gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

        correct = features.correct
        q_np, r_np = targets(correct)
        # rows held out for early stopping; the rest are trained on
        n_hold = int(round(hyper.holdout * n)) if hyper.holdout > 0 and n >= 100 else 0
        order = self.rng.permutation(n)
        self.hold_rows = np.sort(order[:n_hold])
        self.fit_rows = np.sort(order[n_hold:])

        conf = np.stack([features.max_prob, features.entropy, features.vote], axis=2).astype(np.float32)

        def exit_inputs(rows: np.ndarray) -> list:
            # one contiguous [rows, C + 3] block per exit: class probs then the 3 measures
            out = []
            for j in range(k):
                x = np.empty((rows.size, c + 3), dtype=np.float32)
                x[:, :c] = features.probs[rows, j]
                x[:, c:] = conf[rows, j]
                out.append(torch.from_numpy(x))
            return out

        def pack(rows):
            return (
                exit_inputs(rows),
                torch.from_numpy(q_np[rows].astype(np.float32)),
                torch.from_numpy(r_np[rows].astype(np.float32)),
            )

        self.fit = pack(self.fit_rows)
        self.hold = pack(self.hold_rows) if n_hold else None
        self.costs_t = torch.from_numpy(np.asarray(costs, dtype=np.float32))
        self.costs = costs

        self.params = self._init_params(features, q_np, r_np, gen)
        flat_w = [p for e in self.params for p in (e["wx"], e["wb"], e["wh"]) if p is not None]
        flat_b = [p for e in self.params for p in (e["b"], e["bh"])]
        self.opt = _Adam(
            torch,
            [(flat_w, hyper.weight_decay), (flat_b, 0.0)],
            lr=hyper.lr,
            decoupled=hyper.decoupled_weight_decay,
        )
        row_work = sum((c + 3 + j) * hidden[j] for j in range(k))
        self.batch = _auto_batch(self.fit_rows.size, row_work, hyper)
        # a held-out evaluation costs at most about one training step of work
        self.eval_every = max(int(hyper.eval_every), math.ceil(self.hold_rows.size / self.batch))
        self.torch_utilities = None

    # -- parameters -------------------------------------------------------------------
    def _init_params(self, features, q_np, r_np, gen):
        torch = self.torch
        hyper = self.hyper
        k, c = self.k, self.c
        fit_rows = self.fit_rows
        params = []
        for j in range(k):
            d, h = c + 3 + j, self.hidden[j]
            bound = 1.0 / math.sqrt(d)  # torch's default Linear init range
            w = (torch.rand(h, d, generator=gen, dtype=torch.float64) * 2 - 1) * bound
            b = (torch.rand(h, generator=gen, dtype=torch.float64) * 2 - 1) * bound
            hb = 1.0 / math.sqrt(h)
            wh = (torch.rand(2, h, generator=gen, dtype=torch.float64) * 2 - 1) * hb
            bh = torch.zeros(2, dtype=torch.float64)
            if hyper.init in ("prior", "spline"):
                acc = float(np.clip(q_np[fit_rows, j].mean(), 1e-3, 1 - 1e-3))
                wh.zero_()
                bh[0] = math.log(acc / (1 - acc))
            if hyper.init == "spline":
                mp = features.max_prob[fit_rows, j]
                nb = max(1, min(h // 2, hyper.spline_units))
                knots = np.concatenate([[0.0], np.quantile(mp, np.arange(1, nb) / nb)])
                basis = mp[:, None] - knots[None, :]
                basis = np.where(basis > 0, basis, NEGATIVE_SLOPE * basis)
                coef, icpt = _logistic_fit(basis, q_np[fit_rows, j])
                w[:nb] = 0.0
                w[:nb, c] = 1.0  # column c is max_prob
                b[:nb] = torch.from_numpy(-knots)
                wh[0, :nb] = torch.from_numpy(coef)
                bh[0] = icpt
            params.append({"w": w, "b": b, "wh": wh, "bh": bh})
        if hyper.init in ("prior", "spline"):
            logp = np.log(np.clip(tilted_distribution(r_np[fit_rows].mean(axis=0), self.costs, self.budget), 1e-6, None))
            for j in range(k):
                params[j]["bh"][1] = float(logp[j] - logp.max())
        out = []
        for j, p in enumerate(params):
            w = p["w"].float()
            out.append(
                {
                    "wx": w[:, : c + 3].contiguous().requires_grad_(True),
                    "wb": w[:, c + 3 :].contiguous().requires_grad_(True) if j else None,
                    "b": p["b"].float().requires_grad_(True),
                    "wh": p["wh"].float().contiguous().requires_grad_(True),
                    "bh": p["bh"].float().requires_grad_(True),
                }
            )
        return out

    # -- model and loss ---------------------------------------------------------------
    def forward(self, xs):
        torch = self.torch
        F = torch.nn.functional
        us, as_, prev = [], [], []
        for j, p in enumerate(self.params):
            pre = torch.addmm(p["b"], xs[j], p["wx"].T)
            if j:
                pre = pre + torch.stack(prev, 1) @ p["wb"].T
            s = F.leaky_relu(pre, NEGATIVE_SLOPE)
            out = torch.addmm(p["bh"], s, p["wh"].T)
            u, a = out[:, 0], out[:, 1]
            us.append(u)
            as_.append(a)
            su = torch.sigmoid(u)
            prev.append(su.detach() if self.hyper.detach_previous else su)
        return torch.stack(us, 1), torch.stack(as_, 1)

    def loss(self, u, a, q, r):
        torch = self.torch
        F = torch.nn.functional
        k = self.k
        log_r = F.log_softmax(a, dim=1)
        r_hat = log_r.exp()
        with torch.no_grad():  # eq. 13, outside the graph
            survive = (1.0 - torch.cumsum(r_hat, 1) + r_hat).clamp_min(0.0)
            w = survive / survive.sum(0, keepdim=True).clamp_min(1e-12)
        bce = F.binary_cross_entropy_with_logits(u, q, reduction="none")
        l_g = (w * bce).sum() / k
        exp_cost = (r_hat @ self.costs_t).mean()
        l_budget = (self.budget - exp_cost).abs() / self.budget
        l_ce = -(r * log_r).sum() / (u.shape[0] * k)
        total = l_g + self.hyper.alpha * l_budget + self.hyper.beta * l_ce
        return {"loss": total, "loss_g": l_g, "loss_budget": l_budget, "loss_ce": l_ce, "expected_cost": exp_cost}

    # -- training loop ----------------------------------------------------------------
    def _batches(self):
        xs, q, r = self.fit
        n_fit = self.fit_rows.size
        if self.batch >= n_fit:
            while True:
                yield xs, q, r
        while True:
            perm = self.rng.permutation(n_fit)
            for start in range(0, n_fit - self.batch + 1, self.batch):
                idx = self.torch.from_numpy(np.sort(perm[start : start + self.batch]))
                yield [x[idx] for x in xs], q[idx], r[idx]

    def _snapshot(self):
        return [{key: (v.detach().clone() if v is not None else None) for key, v in p.items()} for p in self.params]

    def _restore(self, state):
        with self.torch.no_grad():
            for p, s in zip(self.params, state):
                for key, v in s.items():
                    if v is not None:
                        p[key].copy_(v)

    def _held_out(self) -> float:
        with self.torch.no_grad():
            xs, q, r = self.hold
            return float(self.loss(*self.forward(xs), q, r)["loss_g"])

    def run(self, progress):
        hyper = self.hyper
        total_steps = int(hyper.max_steps)
        batches = self._batches()
        best, best_state, best_step, since = math.inf, None, 0, 0
        ema = None
        first = None
        step = 0
        if self.hold is not None:
            best, best_state = self._held_out(), self._snapshot()
        while step < total_steps:
            xs, q, r = next(batches)
            terms = self.loss(*self.forward(xs), q, r)
            value = float(terms["loss"].detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"EENet loss is not finite at step {step}")
            if first is None:
                first = {key: float(v.detach()) for key, v in terms.items()}
            self.opt.zero_grad()
            terms["loss"].backward()
            self.opt.step()
            step += 1
            if self.hold is not None:
                if step % self.eval_every == 0 or step == total_steps:
                    held = self._held_out()
                    if held < best - hyper.min_delta:
                        best, best_state, best_step, since = held, self._snapshot(), step, 0
                    else:
                        since += self.eval_every
            else:
                ema = value if ema is None else 0.9 * ema + 0.1 * value
                if ema < best - hyper.min_delta:
                    best, best_step, since = ema, step, 0
                else:
                    since += 1
            if progress is not None and (step % hyper.progress_every == 0 or step == total_steps):
                progress(step, total_steps, {"loss": value, "expected_cost": float(terms["expected_cost"].detach())})
            if step >= hyper.min_steps and since >= hyper.patience:
                break
        if best_state is not None:
            self._restore(best_state)
        # final figures on every validation row (training and held-out)
        with self.torch.no_grad():
            parts = [self.fit] + ([self.hold] if self.hold is not None else [])
            us, as_, qs, rs = [], [], [], []
            for xs, q, r in parts:
                u, a = self.forward(xs)
                us.append(u)
                as_.append(a)
                qs.append(q)
                rs.append(r)
            torch = self.torch
            u, a, q, r = (torch.cat(t) for t in (us, as_, qs, rs))
            final = {key: float(v) for key, v in self.loss(u, a, q, r).items()}
            rows = np.concatenate([self.fit_rows, self.hold_rows])
            util = np.empty((self.n, self.k), dtype=np.float64)
            util[rows] = u.double().numpy()
            self.torch_utilities = util
        return {
            "steps": step,
            "best_step": best_step,
            "batch_size": int(self.batch),
            "eval_every": int(self.eval_every),
            "train_rows": int(self.fit_rows.size),
            "holdout_rows": int(self.hold_rows.size),
            "holdout_loss_g": None if self.hold is None else float(best),
            "first": first,
            "final": final,
            "final_loss": final["loss"],
        }

    def export(self) -> dict:
        exits = []
        for j, p in enumerate(self.params):
            w = p["wx"].detach()
            if j:
                w = self.torch.cat([w, p["wb"].detach()], dim=1)
            wh = p["wh"].detach().double()
            bh = p["bh"].detach().double()
            exits.append(
                {
                    "shared_weight": w.double().tolist(),
                    "shared_bias": p["b"].detach().double().tolist(),
                    "utility_weight": wh[0].tolist(),
                    "utility_bias": float(bh[0]),
                    "assign_weight": wh[1].tolist(),
                    "assign_bias": float(bh[1]),
                }
            )
        return {"type": "eenet", "features": list(FEATURES), "negative_slope": NEGATIVE_SLOPE, "exits": exits}


# -- policies ---------------------------------------------------------------------------

THRESHOLD_METHODS = ("quota", "search", "geometric")


def _validation(scores: np.ndarray, thresholds, features: ExitFeatures, costs: np.ndarray) -> dict:
    from eenet_cli.core.methods import validation_figures

    return validation_figures(features, scores, thresholds, costs)


def _training_info(trained: EENetResult) -> dict:
    h = trained.history
    epochs = h["steps"] * h["batch_size"] / max(h["train_rows"], 1)
    return {
        "seed": trained.seed,
        "hyperparameters": trained.hyperparameters,
        "steps": int(h["steps"]),
        "best_step": int(h["best_step"]),
        "epochs": float(epochs),
        "final_loss": float(h["final_loss"]),
        "final_loss_terms": {key: float(v) for key, v in h["final"].items()},
        "holdout_loss_g": h["holdout_loss_g"],
        "budget": trained.budget,
        "learned_distribution": [float(x) for x in trained.distribution],
        "expected_cost": float(h["expected_cost"]),
    }


def _utilities(trained: EENetResult, features: ExitFeatures) -> np.ndarray:
    """The numpy utilities of ``features``; reused from training when it saw this very object."""
    ref = trained.extras.get("features_ref")
    if ref is not None and ref() is features and trained.extras.get("numpy_utilities") is not None:
        return trained.extras["numpy_utilities"]
    return eenet_utilities(trained.scorer, features)


def _resolve_scores(scores_override, features: ExitFeatures, trained: EENetResult):
    scorer = trained.scorer
    if scores_override is None:
        return scorer, _utilities(trained, features)
    if isinstance(scores_override, dict):
        from eenet_cli.core.policy import compute_scores

        return scores_override, compute_scores(scores_override, features)
    override_scorer, scores = scores_override
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (features.num_samples, features.num_exits):
        raise InputError(
            f"scores_override must be [{features.num_samples}, {features.num_exits}], got {list(scores.shape)}"
        )
    return override_scorer, scores


def _search_rules(p: np.ndarray) -> dict:
    """eenet-search's candidate threshold rules on the learned utilities, simplest first:
    Algorithm 1's quotas, the geometric distribution, and coordinate ascent on accuracy
    started from each (on a 64-quantile grid, and on a coarser 16-quantile grid that has
    less room to fit noise)."""

    def quota(ranking, costs, budget, correct):
        return fit_distribution(ranking, costs, budget, p, rounding="round").thresholds

    def geometric(ranking, costs, budget, correct):
        return fit_geometric(ranking, costs, budget).thresholds

    def searched(start, grid, rounds):
        def rule(ranking, costs, budget, correct):
            return search_thresholds(ranking, costs, budget, correct, start(ranking, costs, budget, correct),
                                     grid=grid, rounds=rounds)
        return rule

    return {
        "quota": quota,
        "geometric": geometric,
        "search-from-quota": searched(quota, 64, 4),
        "search-from-geometric": searched(geometric, 64, 4),
        "coarse-search-from-quota": searched(quota, 16, 2),
        "coarse-search-from-geometric": searched(geometric, 16, 2),
    }


SEARCH_FOLDS = 5


def _search_policy(ranking: Ranking, scores, correct, costs, budget: float, p, seed: int):
    """eenet-search: the candidate rule with the best 5-fold cross-validated accuracy on the
    validation rows, refitted on all of them (so the realised validation cost <= budget)."""
    from eenet_cli.core.thresholds import cross_validated_choice

    rules = _search_rules(np.asarray(p, dtype=np.float64))
    chosen, figures = cross_validated_choice(rules, scores, correct, costs, budget, folds=SEARCH_FOLDS, seed=seed)
    thr = rules[chosen](ranking, costs, budget, correct)
    info = {
        "selection": f"{SEARCH_FOLDS}-fold cross-validated accuracy" if figures else "too few rows to cross-validate",
        "chosen_rule": chosen,
        "cross_validated_accuracy": {key: float(v) for key, v in figures.items()},
    }
    return thr, info


def fit_eenet_policy(
    features: ExitFeatures,
    costs,
    budget: float,
    *,
    seed: int = 0,
    hyper: EENetHyper | None = None,
    progress: Progress | None = None,
    thresholds: str = "quota",
    scores_override=None,
    trained: EENetResult | None = None,
    ranking: Ranking | None = None,
) -> dict:
    """Train EENet (or reuse ``trained``) and fit thresholds on the same validation rows.

    ``thresholds``: ``"quota"`` (Algorithm 1: the learned distribution's quotas filled by
    utility, with the realised-cost guarantee of :func:`fit_distribution`), ``"geometric"``
    (learned utilities, MSDNet's geometric distribution: the eenet-geometric ablation) or
    ``"search"`` (eenet-search: among the quota and geometric thresholds and coordinate
    ascent on validation accuracy started from each, the rule with the best
    cross-validated accuracy, see :func:`_search_policy`). ``scores_override`` replaces the utilities used for the
    thresholds: a scorer dict (e.g. ``{"type": "maxprob"}``) or a ``(scorer, scores)``
    pair; the returned policy then carries that scorer. ``ranking`` is an optional
    precomputed :class:`Ranking` of the override's scores. ``trained`` reuses a training
    result made at the same budget (``seed``, ``hyper`` and ``progress`` are then unused),
    so several variants cost one training.

    Returns the policy's pieces: ``scorer``, ``thresholds``, ``exit_distribution``
    (planned share per exit), ``validation``, ``training`` and ``threshold_fit``.
    """
    if thresholds not in THRESHOLD_METHODS:
        raise InputError(f"unknown threshold method {thresholds!r}; expected one of {', '.join(THRESHOLD_METHODS)}")
    costs = _check_inputs(features, costs, budget)
    budget = float(budget)
    if trained is None:
        trained = train_eenet(features, costs, budget, seed=seed, hyper=hyper, progress=progress)
    elif thresholds != "geometric" and not math.isclose(trained.budget, budget, rel_tol=1e-12, abs_tol=0.0):
        raise InputError(
            f"the training result was made for budget {trained.budget:g}, not {budget:g}; "
            "its exit distribution only applies to its own budget"
        )
    if ranking is not None and scores_override is None:
        raise InputError("a precomputed ranking needs scores_override naming the scorer it ranks")
    scorer, scores = _resolve_scores(scores_override, features, trained)
    if ranking is None:
        ranking = Ranking(scores)
    elif ranking.shape != scores.shape:
        raise InputError(f"the ranking is {list(ranking.shape)}, the features are {list(scores.shape)}")
    p = np.asarray(trained.distribution, dtype=np.float64)
    info: dict = {"method": thresholds}
    if thresholds == "geometric":
        fit = fit_geometric(ranking, costs, budget)
        info.update(fit.info)
        thr, planned = fit.thresholds, fit.distribution
    else:
        fit = fit_distribution(ranking, costs, budget, p, rounding="round")
        info.update(fit.info)
        info["rounding"] = "round"
        thr, planned = fit.thresholds, fit.distribution
        if thresholds == "search":
            thr, choice = _search_policy(ranking, scores, features.correct, costs, budget, p, seed)
            info.update(choice)
            planned = None
    validation = _validation(scores, thr, features, costs)
    if planned is None:
        planned = validation["exit_fractions"]
    if not within_budget(validation["avg_cost"], budget):  # the fitters above guarantee it; guard the contract
        raise AssertionError("fitted thresholds overrun the budget on validation")
    return {
        "scorer": scorer,
        "thresholds": [None if t is None else float(t) for t in thr],
        "exit_distribution": [float(x) for x in planned],
        "validation": validation,
        "training": _training_info(trained),
        "threshold_fit": info,
    }


def fit_eenet_maxprob(
    features: ExitFeatures,
    costs,
    budget: float,
    *,
    seed: int = 0,
    hyper: EENetHyper | None = None,
    progress: Progress | None = None,
    trained: EENetResult | None = None,
    ranking: Ranking | None = None,
) -> dict:
    """The eenet-maxprob ablation: EENet's learned exit distribution, max-prob scores.

    ``ranking`` may be a precomputed ``Ranking(features.max_prob)``.
    """
    scores = features.max_prob if ranking is None else ranking.scores
    return fit_eenet_policy(
        features,
        costs,
        budget,
        seed=seed,
        hyper=hyper,
        progress=progress,
        thresholds="quota",
        scores_override=({"type": "maxprob"}, scores),
        trained=trained,
        ranking=ranking,
    )
