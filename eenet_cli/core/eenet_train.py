"""Learning EENet's exit policy (§3.2, Algorithm 1) with torch, exported to numpy.

DRAFT — docstring rewritten once defaults are measured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from eenet_cli.core.eenet_scorer import assignment_distribution, eenet_forward
from eenet_cli.core.measures import ExitFeatures
from eenet_cli.core.thresholds import (
    Ranking,
    apply_thresholds,
    fit_distribution,
    fit_geometric,
    realised_cost,
    search_thresholds,
)
from eenet_cli.errors import BudgetError, InputError

FEATURES = ["class_probs", "max_prob", "entropy", "vote", "previous_utilities"]
NEGATIVE_SLOPE = 0.01

Progress = Callable[[int, int, dict], None]


@dataclass
class EENetHyper:
    hidden_ratio: float = 0.5
    min_hidden: int = 8
    alpha: float = 1.0
    beta: float = 1.0
    lr: float = 1e-2
    weight_decay: float = 0.01
    decoupled_weight_decay: bool = True
    max_steps: int = 500
    min_steps: int = 100
    patience: int = 50
    min_delta: float = 1e-4
    ema: float = 0.9
    batch_size: int | None = None
    max_batch_work: float = 1.5e9
    min_batch: int = 256
    detach_previous: bool = True
    init: str = "spline"
    num_threads: int | None = 1
    progress_every: int = 10
    warm_noise: float = 0.1
    holdout: float = 0.2
    eval_every: int = 5
    stop_on: str = "g"
    spline_units: int = 4
    spline_l2: float = 1e-4

    def hidden_sizes(self, num_classes: int, num_exits: int) -> list[int]:
        return [max(self.min_hidden, math.ceil(self.hidden_ratio * (num_classes + 3 + k))) for k in range(num_exits)]


@dataclass
class EENetResult:
    scorer: dict
    distribution: np.ndarray
    history: dict
    hyperparameters: dict
    seconds: float = 0.0
    train_budget: float = 0.0
    extras: dict = field(default_factory=dict)


def _check_inputs(features: ExitFeatures, costs: np.ndarray, budget: float) -> np.ndarray:
    if features.labels is None:
        raise InputError("EENet needs labels to learn a policy")
    k = features.num_exits
    costs = np.asarray(costs, dtype=np.float64)
    if costs.shape != (k,):
        raise InputError(f"expected {k} costs, one per exit, got {costs.shape}")
    if not np.all(np.isfinite(costs)) or np.any(costs <= 0) or np.any(np.diff(costs) <= 0):
        raise InputError("costs must be positive and strictly increasing")
    if not np.isfinite(budget) or budget < costs[0]:
        raise BudgetError(f"budget {budget:g} is below the cost of the first exit ({costs[0]:g})")
    return costs


def train_eenet(
    features: ExitFeatures,
    costs: np.ndarray,
    budget: float,
    *,
    seed: int = 0,
    hyper: EENetHyper | None = None,
    progress: Progress | None = None,
) -> EENetResult:
    import torch
    import torch.nn.functional as F

    hyper = hyper or EENetHyper()
    costs = _check_inputs(features, costs, budget)
    t0 = time.perf_counter()
    n, k, c = features.probs.shape
    train_budget = float(min(budget, costs[-1]))
    hidden = hyper.hidden_sizes(c, k)

    prev_threads = torch.get_num_threads()
    threads = hyper.num_threads or prev_threads
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(int(seed))
        rng = np.random.default_rng(seed)

        probs = torch.from_numpy(np.ascontiguousarray(features.probs, dtype=np.float32))
        conf_np = np.stack([features.max_prob, features.entropy, features.vote], axis=2)
        conf = torch.from_numpy(conf_np.astype(np.float32))
        correct = features.correct
        q = torch.from_numpy(correct.astype(np.float32))
        ncorrect = correct.sum(axis=1, keepdims=True)
        r_np = np.where(ncorrect > 0, correct / np.maximum(ncorrect, 1), 1.0 / k)
        r = torch.from_numpy(r_np.astype(np.float32))
        cost_t = torch.from_numpy(costs.astype(np.float32))

        # split for early stopping
        n_hold = int(round(hyper.holdout * n)) if hyper.holdout > 0 and n >= 100 else 0
        order = rng.permutation(n)
        hold_rows = np.sort(order[:n_hold])
        fit_rows = np.sort(order[n_hold:])
        n_fit = fit_rows.size

        # parameters
        params = []
        for j in range(k):
            d = c + 3 + j
            h = hidden[j]
            bound = 1.0 / math.sqrt(d)
            w = (torch.rand(h, d, generator=gen) * 2 - 1) * bound
            b = (torch.rand(h, generator=gen) * 2 - 1) * bound
            hb = 1.0 / math.sqrt(h)
            wu = (torch.rand(h, generator=gen) * 2 - 1) * hb
            wa = (torch.rand(h, generator=gen) * 2 - 1) * hb
            bu = torch.zeros(())
            ba = torch.zeros(())
            if hyper.init in ("prior", "spline"):
                acc = float(np.clip(correct[fit_rows, j].mean(), 1e-3, 1 - 1e-3))
                bu = torch.tensor(math.log(acc / (1 - acc)))
                wa = torch.zeros(h)
                wu = wu * hyper.warm_noise
            if hyper.init == "spline":
                mp = features.max_prob[fit_rows, j]
                nb = min(h // 2, hyper.spline_units)
                knots = np.concatenate([[0.0], np.quantile(mp, np.arange(1, nb) / nb)])
                basis = mp[:, None] - knots[None, :]
                basis = np.where(basis > 0, basis, NEGATIVE_SLOPE * basis)
                coef, icpt = _logistic_fit(basis, correct[fit_rows, j].astype(np.float64), l2=hyper.spline_l2)
                w[:nb] = 0.0
                w[:nb, c] = 1.0
                b[:nb] = torch.from_numpy(-knots.astype(np.float32))
                wu[:nb] = torch.from_numpy(coef.astype(np.float32))
                bu = torch.tensor(float(icpt))
            params.append([t.clone().float().requires_grad_(True) for t in (w, b, wu, bu, wa, ba)])
        if hyper.init in ("prior", "spline"):
            logp = _prior_assign_bias(r_np[fit_rows].mean(axis=0), costs, train_budget)
            for j in range(k):
                with torch.no_grad():
                    params[j][5].fill_(float(logp[j]))

        flat = [t for p in params for t in p]
        opt_cls = torch.optim.AdamW if hyper.decoupled_weight_decay else torch.optim.Adam
        opt = opt_cls(flat, lr=hyper.lr, weight_decay=hyper.weight_decay)

        def forward(pb, cb):
            us, as_ = [], []
            prev = []
            for j in range(k):
                w, b, wu, bu, wa, ba = params[j]
                pre = pb[:, j] @ w[:, :c].T + cb[:, j] @ w[:, c : c + 3].T + b
                if j:
                    pre = pre + torch.stack(prev, 1) @ w[:, c + 3 :].T
                s = F.leaky_relu(pre, NEGATIVE_SLOPE)
                u = s @ wu + bu
                a = s @ wa + ba
                us.append(u)
                as_.append(a)
                su = torch.sigmoid(u)
                prev.append(su.detach() if hyper.detach_previous else su)
            return torch.stack(us, 1), torch.stack(as_, 1)

        def loss_terms(u, a, qb, rb):
            logr = F.log_softmax(a, dim=1)
            rhat = logr.exp()
            with torch.no_grad():
                surv = 1 - torch.cumsum(rhat, 1) + rhat
                surv = surv.clamp_min(0)
                w = surv / surv.sum(0, keepdim=True).clamp_min(1e-12)
            bce = F.binary_cross_entropy_with_logits(u, qb, reduction="none")
            l_g = (w * bce).sum() / k
            exp_cost = (rhat @ cost_t).mean()
            l_b = (train_budget - exp_cost).abs() / train_budget
            l_ce = -(rb * logr).sum() / (u.shape[0] * k)
            total = l_g + hyper.alpha * l_b + hyper.beta * l_ce
            return total, l_g, l_b, l_ce, exp_cost

        def rows(idx):
            t = torch.from_numpy(idx)
            return probs[t], conf[t], q[t], r[t]

        full_fit = rows(fit_rows) if n_hold else (probs, conf, q, r)
        hold = rows(hold_rows) if n_hold else None

        row_work = sum((c + 3 + j) * hidden[j] for j in range(k))
        if hyper.batch_size:
            bs = min(n_fit, int(hyper.batch_size))
        elif n_fit * row_work <= hyper.max_batch_work:
            bs = n_fit
        else:
            bs = min(n_fit, max(hyper.min_batch, int(hyper.max_batch_work // row_work)))

        def snapshot():
            return [[t.detach().clone() for t in p] for p in params]

        step = 0
        best = math.inf
        best_state = None
        best_step = 0
        since = 0
        ema = None
        perm = np.arange(n_fit)
        pos = n_fit
        first_loss = None
        total_steps = hyper.max_steps
        hold_curve = []
        while step < total_steps:
            if bs == n_fit:
                pb, cb, qb, rb = full_fit
            else:
                if pos + bs > n_fit:
                    perm = rng.permutation(n_fit)
                    pos = 0
                pb, cb, qb, rb = rows(fit_rows[np.sort(perm[pos : pos + bs])])
                pos += bs
            u, a = forward(pb, cb)
            total, l_g, l_b, l_ce, exp_cost = loss_terms(u, a, qb, rb)
            val = float(total.detach())
            if not math.isfinite(val):
                raise FloatingPointError(f"EENet loss is not finite at step {step}")
            if first_loss is None:
                first_loss = val
                if hold is not None:
                    with torch.no_grad():
                        hv = _crit(loss_terms(*forward(hold[0], hold[1]), hold[2], hold[3]), hyper)
                    best, best_state, best_step = hv, snapshot(), 0
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            step += 1
            if hold is not None:
                if step % hyper.eval_every == 0 or step == total_steps:
                    with torch.no_grad():
                        hv = _crit(loss_terms(*forward(hold[0], hold[1]), hold[2], hold[3]), hyper)
                    hold_curve.append((step, hv))
                    if hv < best - hyper.min_delta:
                        best, best_state, best_step = hv, snapshot(), step
                        since = 0
                    else:
                        since += hyper.eval_every
            else:
                ema = val if ema is None else hyper.ema * ema + (1 - hyper.ema) * val
                if ema < best - hyper.min_delta:
                    best = ema
                    since = 0
                else:
                    since += 1
            if progress is not None and (step % hyper.progress_every == 0 or step == total_steps):
                progress(step, total_steps, {"loss": val, "expected_cost": float(exp_cost)})
            if step >= hyper.min_steps and since >= hyper.patience:
                break
        if best_state is not None:
            with torch.no_grad():
                for p, s in zip(params, best_state):
                    for t, v in zip(p, s):
                        t.copy_(v)

        with torch.no_grad():
            u, a = forward(probs, conf)
            total, l_g, l_b, l_ce, exp_cost = loss_terms(u, a, q, r)
        scorer = {
            "type": "eenet",
            "features": list(FEATURES),
            "negative_slope": NEGATIVE_SLOPE,
            "exits": [
                {
                    "shared_weight": p[0].detach().double().tolist(),
                    "shared_bias": p[1].detach().double().tolist(),
                    "utility_weight": p[2].detach().double().tolist(),
                    "utility_bias": float(p[3].detach()),
                    "assign_weight": p[4].detach().double().tolist(),
                    "assign_bias": float(p[5].detach()),
                }
                for p in params
            ],
        }
    finally:
        torch.set_num_threads(prev_threads)
    dist = assignment_distribution(scorer, features)
    history = {
        "steps": step,
        "best_step": best_step,
        "batch_size": bs,
        "first_loss": first_loss,
        "final_loss": float(total),
        "final_loss_g": float(l_g),
        "final_loss_budget": float(l_b),
        "final_loss_ce": float(l_ce),
        "expected_cost": float(dist @ costs),
        "torch_utilities": u.double().numpy(),
        "hold_curve": hold_curve,
    }
    hp = asdict(hyper)
    hp["hidden_sizes"] = hidden
    hp["num_threads"] = threads
    return EENetResult(scorer, dist, history, hp, time.perf_counter() - t0, train_budget)


def _crit(terms, hyper):
    total, l_g, l_b, l_ce, _ = terms
    if hyper.stop_on == "g":
        return float(l_g)
    return float(total)


def _prior_assign_bias(mean_r: np.ndarray, costs: np.ndarray, budget: float) -> np.ndarray:
    """log p for p ∝ mean_r · exp(-λ c) with expected cost = budget (bisection on λ)."""
    logm = np.log(np.clip(mean_r, 1e-6, None))
    cn = (costs - costs[0]) / (costs[-1] - costs[0])

    def dist(lam):
        z = logm - lam * cn
        z = z - z.max()
        p = np.exp(z)
        return p / p.sum()

    lo, hi = -200.0, 200.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if dist(mid) @ costs > budget:
            lo = mid
        else:
            hi = mid
    p = dist(hi)
    return np.log(np.clip(p, 1e-6, None))


def _logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 25):
    """Newton's method for a small L2-regularised logistic regression (float64)."""
    n, d = x.shape
    xa = np.concatenate([x, np.ones((n, 1))], axis=1)
    beta = np.zeros(d + 1)
    ybar = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    beta[-1] = np.log(ybar / (1 - ybar))
    reg = np.full(d + 1, l2 * n)
    reg[-1] = 0.0
    for _ in range(iters):
        z = xa @ beta
        p = 0.5 * (1 + np.tanh(0.5 * z))
        g = xa.T @ (p - y) + reg * beta
        h = (xa * (p * (1 - p))[:, None]).T @ xa + np.diag(reg) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(h, g)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return beta[:-1], beta[-1]
