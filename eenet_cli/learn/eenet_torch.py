"""EENet's trainer (paper §3.2, Algorithm 1) in torch: the learner for
:func:`eenet_cli.core.eenet.fit_eenet_policy`.

:func:`train_eenet` learns the utility and assignment heads (eq. 8-10) on validation
features, in float32 on features computed once, with the loss
``L = L_g + α·L_budget + β·L_CE`` (eq. 11, 14, 15), and exports the weights as plain float
lists in the numpy scorer format of :mod:`eenet_cli.core.eenet`; everything downstream (the
exit distribution, the thresholds, applying the policy) uses the numpy scorer, so a policy
reproduces its validation figures exactly. Budgets above c_K train against c_K.

The model, the loss as implemented, and the measurements behind every default
(initialisation, early stopping, optimiser, α and β, batching, determinism, speed):
docs/eenet.md. torch is imported when training starts, not when this module is imported.
"""

from __future__ import annotations

import math
import os
import sys
import time
import weakref
from dataclasses import asdict

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

from eenet_cli.core.eenet import (
    INPUTS,
    NEGATIVE_SLOPE,
    EENetHyper,
    EENetResult,
    Progress,
    _check_hyper,
    _check_inputs,
    _logistic_fit,
    base_width,
    eenet_forward,
    exit_inputs,
    input_width,
    max_prob_column,
    targets,
    tilted_distribution,
)
from eenet_cli.core.measures import ExitFeatures

__all__ = ["train_eenet"]


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

    Returns the scorer in the numpy JSON format of :mod:`eenet_cli.core.eenet`
    and the exit distribution ``p_k = mean softmax(assignment logits)`` computed by the
    numpy scorer on all rows of ``features``. With more rows than
    ``hyper.max_train_rows`` the network is trained on a seeded sample of that many (a
    scorer of a few hundred weights learns nothing more from millions of rows, and
    training time stays bounded); the distribution, and the thresholds fitted on the
    utilities, use every row.
    """
    import torch

    hyper = hyper or EENetHyper()
    costs = _check_inputs(features, costs, budget)
    _check_hyper(hyper)
    t_start = time.perf_counter()
    n, k = features.preds.shape
    c = features.num_classes
    train_budget = float(min(float(budget), costs[-1]))
    hidden = hyper.hidden_sizes(c, k)
    from eenet_cli.memory import check_memory

    # the network (weights, gradients, two Adam moments, float32) and its float32 inputs
    widths = [input_width(hyper.inputs, j, c) for j in range(k)]
    weights = sum(h * (d + 3) for d, h in zip(widths, hidden))
    n_train = n if hyper.max_train_rows is None else min(n, int(hyper.max_train_rows))
    check_memory(4 * (4 * weights + 2 * n_train * sum(widths)), f"EENet training on {n_train} rows x {k} exits x {c} classes")
    threads = int(hyper.num_threads or min(2, os.cpu_count() or 1))

    train_rows = None
    if hyper.max_train_rows is not None and n > hyper.max_train_rows:
        train_rows = np.sort(np.random.default_rng(seed).choice(n, size=int(hyper.max_train_rows), replace=False))
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trainer = _Trainer(features if train_rows is None else features.subset(train_rows), costs, train_budget, hidden, hyper, int(seed))
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
    hp["train_rows"] = n if train_rows is None else int(train_rows.size)
    return EENetResult(
        scorer=scorer,
        distribution=dist,
        history=history,
        hyperparameters=hp,
        seed=int(seed),
        budget=float(budget),
        seconds=time.perf_counter() - t_start,
        extras={
            "torch_utilities": torch_utilities,  # of the rows trained on: train_rows, or every row
            "train_rows": train_rows,
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
        n, k = features.preds.shape
        c = features.num_classes
        self.n, self.k, self.c = n, k, c
        self.inputs = inputs = hyper.inputs
        self.base = [base_width(inputs, j, c) for j in range(k)]
        gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

        correct = features.correct
        q_np, r_np = targets(correct)
        # rows held out for early stopping; the rest are trained on
        n_hold = int(round(hyper.holdout * n)) if hyper.holdout > 0 and n >= 100 else 0
        order = self.rng.permutation(n)
        self.hold_rows = np.sort(order[:n_hold])
        self.fit_rows = np.sort(order[n_hold:])

        def inputs_of(rows: np.ndarray) -> list:
            # one contiguous float32 block per exit (core.eenet.exit_inputs, the numpy scorer's layout)
            return [torch.from_numpy(exit_inputs(features, j, rows, inputs, np.float32)) for j in range(k)]

        def pack(rows):
            return (
                inputs_of(rows),
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
        row_work = sum(input_width(inputs, j, c) * hidden[j] for j in range(k))
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
            base = self.base[j]
            d, h = base + j, self.hidden[j]
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
                w[:nb, max_prob_column(self.inputs, c)] = 1.0
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
                    "wx": w[:, : self.base[j]].contiguous().requires_grad_(True),
                    "wb": w[:, self.base[j] :].contiguous().requires_grad_(True) if j else None,
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
        return {"type": "eenet", "features": list(INPUTS[self.inputs]), "negative_slope": NEGATIVE_SLOPE, "exits": exits}
