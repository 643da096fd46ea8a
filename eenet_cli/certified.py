"""Certified policies: a fitted method, then a threshold shift chosen on held-out
calibration rows so that its expected cost (and, if asked, its accuracy drop or its
disagreement with the last exit) is within the requested level with the requested
confidence, on new data from the same distribution. The statistics live in
:mod:`eenet_cli.core.certify`; the procedure and its assumptions in docs/certify.md.

This module wires a method's fit (core, and the learner for EENet) to the calibration;
:mod:`eenet_cli.api` exposes it through ``fit_policy(..., confidence=...)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np

from eenet_cli.core.certify import Infeasible, calibrate, calibrate_columns, certify_policy, shift_grid, shifted_thresholds
from eenet_cli.core.figures import validation_figures
from eenet_cli.core.measures import ExitFeatures
from eenet_cli.core.methods import METHODS, FitCache, fit_method
from eenet_cli.core.policy import POLICY_TIE_BREAK_VERSION, TIE_BREAK_SCORERS, compute_scores
from eenet_cli.core.thresholds import ACCEPT_ALL, Ranking, apply_thresholds, fit_distribution
from eenet_cli.errors import InputError, WorkFailed

BOUNDS = (
    "betting (Waudby-Smith & Ramdas) on the cost normalised to [c_1, c_K]; "
    "exact binomial (Clopper-Pearson) on harm and disagreement"
)
PROCEDURE = "one threshold shift chosen by fixed-sequence testing on held-out calibration rows (docs/certify.md)"
ASSUMES = "calibration rows and deployed samples are exchangeable: the same distribution and the same model"


def check_level(name: str, value: float | None, flag: str, *, low: float = 0.0, high: float = 1.0) -> float | None:
    if value is None:
        return None
    if not (low < float(value) < high):
        raise InputError(f"must be between {low:g} and {high:g} (exclusive), got {value}", field=flag)
    return float(value)


def default_share(n: int, delta: float, budget, max_drop, max_disagreement) -> float:
    """The share of the validation rows held out to certify on, by default: half, or up to
    three quarters when only loss limits are asked for and half the rows are too few to
    resolve them (fewer than ``5 ln(1/δ_loss) / ε`` rows; zero losses in ``ln(1/δ)/ε`` rows
    are needed just to certify ε). Depends on the request and ``n`` only, never on the data."""
    levels = [e for e in (max_drop, max_disagreement) if e is not None]
    if budget is not None or not levels:
        return 0.5
    d = delta / len(levels)
    want = 5.0 * math.log(1.0 / d) / min(levels)
    return float(min(0.75, max(0.5, want / max(n, 1))))


def calibration_split(n: int, share: float, seed: int) -> np.ndarray:
    """Boolean mask of the calibration rows among ``n`` validation rows: a seeded random
    ``share`` of them (independent of the values, so exchangeability is kept)."""
    rng = np.random.default_rng([seed, 0xCE47])
    m = int(round(share * n))
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[:m]] = True
    return mask


def rows_digest(mask: np.ndarray, predictions_sha256: str) -> str:
    """sha256 naming the calibration rows: which rows of which predictions."""
    h = hashlib.sha256(predictions_sha256.encode())
    h.update(np.flatnonzero(mask).astype("<i8").tobytes())
    return h.hexdigest()


def fit_certified(
    method: str,
    feats: ExitFeatures,
    costs: np.ndarray,
    unit: str,
    *,
    budget: float | None,
    confidence: float | None,
    max_drop: float | None = None,
    max_disagreement: float | None = None,
    deploy_batch: int | None = None,
    calibration_share: float | None = None,
    seed: int = 0,
    hyper=None,
    progress: Callable | None = None,
    learner=None,
    predictions_sha256: str = "",
    caches: dict | None = None,
    outputs: str = "own",
) -> dict:
    """A policy of ``method`` whose requested levels hold with probability >=
    ``confidence`` over the calibration rows (``confidence=None``: the same choice made on
    the empirical figures alone, on every validation row, with no statement of confidence).
    ``caches`` (any dict the caller keeps) reuses the budget-free parts of a fit (trained
    scorers, lookahead's estimators) across calls on the same features and fit rows.
    ``outputs`` (``combined`` or ``auto``) pools exit outputs (docs/outputs.md) with weights
    fitted on the fit rows only, so the calibration rows stay unseen; every figure, the
    accuracy drop and the disagreement included, is then of the pooled predictions (the
    last exit's reference is its pooled prediction, the one the policy returns there)."""
    costs = np.asarray(costs, dtype=np.float64)
    n = feats.num_samples
    if budget is None and max_drop is None and max_disagreement is None:
        raise InputError("give --budget, --max-drop or --max-disagreement", field="--budget")
    # the policy the shift moves is fitted at the budget, or without one halfway up the costs
    base_budget = budget if budget is not None else float(costs[0] + 0.5 * (costs[-1] - costs[0]))
    if confidence is None:
        fit_mask = cal_mask = np.ones(n, dtype=bool)
    else:
        if calibration_share is None:
            calibration_share = default_share(n, 1.0 - confidence, budget, max_drop, max_disagreement)
        cal_mask = calibration_split(n, calibration_share, seed)
        fit_mask = ~cal_mask
        if fit_mask.sum() < 20 or cal_mask.sum() < 20:
            raise InputError(f"{n} validation rows are too few to fit on one part and certify on the other (at least 40)", field="--confidence")
    block = None
    if outputs != "own":
        from eenet_cli.core.outputs import combine, fit_outputs

        block = fit_outputs(feats.subset(fit_mask), outputs, seed=seed)
        feats = combine(feats, block)
    fit_feats, cal_feats = feats.subset(fit_mask), feats.subset(cal_mask)
    key = (id(feats), hashlib.sha256(np.packbits(fit_mask).tobytes()).hexdigest())
    cache = caches.get(key) if caches is not None else None
    if cache is None:
        cache = FitCache(fit_feats)
        if caches is not None:
            caches[key] = cache
    policy = fit_method(method, cache, costs, base_budget, unit, seed=seed, hyper=hyper, progress=progress, learner=learner)
    if policy["scorer"]["type"] in TIE_BREAK_SCORERS:
        # patience's run lengths take K values, so its threshold shift would move the cost in
        # K steps; with the max-prob tie-break it moves it continuously (same decisions at
        # the fitted integer thresholds, core.policy.TIE_BREAKS)
        policy["scorer"]["tie_break"] = "max_prob"
        policy["version"] = POLICY_TIE_BREAK_VERSION  # an older eenet refuses it, rather than apply it as plain patience
        if any(t is not None and t <= ACCEPT_ALL for t in policy["thresholds"][:-1]):
            # patience 1 (stop at exit 1) is no threshold the shift can move: start from
            # patience 2 (the shift reaches patience 1 and below, and above, continuously)
            policy["thresholds"] = [2.0] * (costs.size - 1) + [None]
    if budget is None:
        # only loss limits: a family chosen on the fit rows, calibrated on the others (docs/certify.md)
        delta = None if confidence is None else 1.0 - confidence
        name, family = choose_family(
            loss_families(method, policy, cache, costs, unit, seed=seed, hyper=hyper, learner=learner),
            fit_feats, costs, max_drop, max_disagreement, delta, seed,
        )
        exits = family_exits(family, cal_feats)
        if confidence is None:
            j = empirical_choice(exits, cal_feats, costs, None, max_drop, max_disagreement)
            cal = None
        else:
            try:
                cal = calibrate_columns(
                    exits, [thr for _, thr in family], costs, max_drop=max_drop, max_disagreement=max_disagreement,
                    correct=cal_feats.correct if cal_feats.labels is not None else None, preds=cal_feats.preds,
                    delta=delta, seed=seed,
                )
            except Infeasible as e:
                raise WorkFailed(_infeasible_message(e, unit)) from None
            j = int(cal.index)
        policy["scorer"], thresholds = family[j]
        shift = None
        path_info = {"family": name, "size": len(family), "chosen": j}
    else:
        path_info = None
        base_thresholds = list(policy["thresholds"])
        fit_scores = compute_scores(policy["scorer"], fit_feats)
        grid = shift_grid(fit_scores, policy["thresholds"], costs=costs, focus=budget, size=GRID_SIZE if budget is None else BUDGET_GRID_SIZE)
        cal_scores = compute_scores(policy["scorer"], cal_feats)
        if confidence is None:
            thresholds, shift = empirical_shift(cal_scores, policy["thresholds"], costs, grid, cal_feats, budget, max_drop, max_disagreement, unit)
            cal = None
        else:
            try:
                cal = calibrate(
                    cal_scores, policy["thresholds"], costs, grid,
                    budget=budget, max_drop=max_drop, max_disagreement=max_disagreement,
                    correct=cal_feats.correct if cal_feats.labels is not None else None, preds=cal_feats.preds,
                    delta=1.0 - confidence, seed=seed, deploy_batch=deploy_batch,
                )
            except Infeasible as e:
                raise WorkFailed(_infeasible_message(e, unit)) from None
            thresholds, shift = cal.thresholds, cal.shift
    policy["thresholds"] = thresholds
    all_scores = compute_scores(policy["scorer"], feats)
    policy["validation"] = validation_figures(feats, all_scores, thresholds, costs)
    if budget is not None:
        policy["budget"] = {"value": float(budget), "unit": unit}
    if confidence is not None:
        policy["certificate"] = certificate(cal, confidence, unit, calibration_share, seed, cal_mask, predictions_sha256, int(fit_mask.sum()))
    extra = {"shift": shift, "uncalibrated_thresholds": base_thresholds} if path_info is None else {"calibrated_over": path_info}
    policy["threshold_fit"] = {**policy.get("threshold_fit", {}), **extra, "fitted_at_budget": base_budget}
    if block is not None:
        from eenet_cli.core.outputs import attach_outputs

        attach_outputs(policy, block)
    return policy


PATH_SIZE = 64
GRID_SIZE = 256
BUDGET_GRID_SIZE = 160  # with a budget the grid is focused near it (core.certify.shift_grid)

Family = list[tuple[dict, list]]


def loss_families(method: str, base: dict, cache: FitCache, costs: np.ndarray, unit: str, *, seed: int, hyper=None,
                  learner=None) -> dict[str, Family]:
    """The families of policies a loss limit can be calibrated over, each cheapest first as
    (scorer, thresholds) and each fixed by the fit rows alone:

    * ``budget path``: the method fitted at :data:`PATH_SIZE` budgets evenly spread over
      ``(c_1, c_K)`` (a method that needs training is trained once, at ``base``'s budget,
      and its thresholds re-fitted at each budget from its exit distribution tilted there);
    * ``threshold shift``: ``base``'s thresholds moved together (as for a budget);
    * ``one threshold``: one threshold shared by every exit on ``base``'s scores.

    Every family starts with everyone at exit 1 and ends with everyone at the last exit."""
    k = costs.size
    scorer, thr = base["scorer"], base["thresholds"]
    first, last = (scorer, shifted_thresholds(thr, -np.inf)), (scorer, shifted_thresholds(thr, np.inf))
    budgets = np.linspace(costs[0], costs[-1], PATH_SIZE + 2)[1:-1]
    path = [first]
    if METHODS[method].needs_learner:
        from eenet_cli.core.eenet import tilted_distribution

        ranking = Ranking(compute_scores(scorer, cache.features))
        p = np.asarray(base.get("exit_distribution") or np.full(k, 1.0 / k), dtype=np.float64)
        for b in budgets:
            fit = fit_distribution(ranking, costs, float(b), tilted_distribution(p, costs, float(b)))
            path.append((scorer, [None if t is None else float(t) for t in fit.thresholds]))
    else:
        for b in budgets:
            pol = fit_method(method, cache, costs, float(b), unit, seed=seed, hyper=hyper, learner=learner)
            path.append((pol["scorer"], pol["thresholds"]))
    path.append(last)
    fit_scores = compute_scores(scorer, cache.features)
    shift = [(scorer, shifted_thresholds(thr, g)) for g in shift_grid(fit_scores, thr, size=GRID_SIZE, costs=costs)]
    pooled = fit_scores[:, :-1]
    pooled = np.unique(np.quantile(pooled[np.isfinite(pooled)], np.linspace(0.0, 1.0, GRID_SIZE - 2))) if k > 1 else np.array([])
    one = [first] + [(scorer, [float(t)] * (k - 1) + [None]) for t in pooled[::-1]] + [last]
    return {"budget path": path, "threshold shift": shift, "one threshold": one}


def family_exits(family: Family, feats: ExitFeatures) -> np.ndarray:
    """``[n, G]`` exit of every row under every member of ``family`` (scores computed once
    per distinct scorer)."""
    scores: dict[str, np.ndarray] = {}
    cols = []
    for scorer, thr in family:
        key = repr(scorer)
        if key not in scores:
            scores[key] = compute_scores(scorer, feats)
        cols.append(apply_thresholds(scores[key], thr).astype(np.int16))
    return np.stack(cols, axis=1)


def choose_family(families: dict[str, Family], fit_feats: ExitFeatures, costs: np.ndarray, max_drop, max_disagreement,
                  delta: float | None, seed: int) -> tuple[str, Family]:
    """The family whose calibration, rehearsed on the fit rows, gives the cheapest policy.
    The rehearsal sees only the fit rows, so the calibration proper stays valid whichever
    family wins; ties go to the earlier family."""
    best = None
    correct = fit_feats.correct if fit_feats.labels is not None else None
    for name, family in families.items():
        exits = family_exits(family, fit_feats)
        if delta is None:
            try:
                j = empirical_choice(exits, fit_feats, costs, None, max_drop, max_disagreement)
            except WorkFailed:
                continue
        else:
            cal = calibrate_columns(exits, [t for _, t in family], costs, max_drop=max_drop, max_disagreement=max_disagreement,
                                    correct=correct, preds=fit_feats.preds, delta=delta, seed=seed, on_infeasible="return")
            if cal.index is None:
                continue
            j = int(cal.index)
        cost = float(costs[exits[:, j].astype(np.intp)].mean())
        if best is None or cost < best[0]:
            best = (cost, name, family)
    if best is None:
        name = "budget path"
        return name, families[name]
    return best[1], best[2]


def empirical_choice(exits: np.ndarray, feats: ExitFeatures, costs: np.ndarray, budget, max_drop, max_disagreement) -> int:
    """Index of the family member chosen on the figures alone (no confidence): within the
    budget the most accurate (the dearest), with only loss limits the cheapest, that meets
    every limit."""
    rows = np.arange(feats.num_samples)[:, None]
    exits = exits.astype(np.int64)
    cost = costs[exits].mean(axis=0)
    ok = np.ones(exits.shape[1], dtype=bool)
    if budget is not None:
        ok &= cost <= budget * (1 + 1e-12)
    if max_drop is not None:
        if feats.labels is None:
            raise InputError("--max-drop needs labels; --max-disagreement does not", field="--max-drop")
        harm = ~feats.correct[rows, exits] & feats.correct[:, -1][:, None]
        ok &= harm.mean(axis=0) <= max_drop
    if max_disagreement is not None:
        ok &= (feats.preds[rows, exits] != feats.preds[:, -1][:, None]).mean(axis=0) <= max_disagreement
    if not ok.any():
        raise WorkFailed("no policy of this method meets every limit on the validation rows; loosen a limit or raise the budget")
    return int(np.flatnonzero(ok)[-1] if budget is not None else np.flatnonzero(ok)[np.argmin(cost[ok])])


def empirical_shift(scores, thresholds, costs, grid, feats: ExitFeatures, budget, max_drop, max_disagreement, unit):
    """The shift chosen on the validation figures alone (no confidence): within the budget
    the most accurate, with only loss limits the cheapest, that meets every limit."""
    from eenet_cli.core.certify import exits_for_shifts

    j = empirical_choice(exits_for_shifts(scores, thresholds, grid), feats, costs, budget, max_drop, max_disagreement)
    return shifted_thresholds(thresholds, float(grid[j])), float(grid[j])


def _infeasible_message(e: Infeasible, unit: str) -> str:
    parts = ["the requested limits cannot all be certified with this confidence"]
    if e.needed_budget is not None:
        parts.append(f"the smallest certifiable budget is {e.needed_budget:.4g}{unit}")
    if e.drop_at_budget is not None:
        parts.append(f"at the budget the certified accuracy drop is {100 * e.drop_at_budget:.2f}%")
    if e.disagreement_at_budget is not None:
        parts.append(f"at the budget the certified disagreement is {100 * e.disagreement_at_budget:.2f}%")
    if len(parts) == 1 and e.reason:
        parts.append(e.reason)
    return "; ".join(parts) + " (more calibration rows tighten the bounds)"


def certificate(cal, confidence: float, unit: str, share: float, seed: int, cal_mask: np.ndarray, sha: str, fit_rows: int) -> dict:
    """The certificate block of a policy (docs/spec.md §2.4)."""
    guarantees = []
    if cal.budget is not None:
        guarantees.append({
            "what": "expected cost" if cal.deploy_batch is None else f"mean cost of the next {cal.deploy_batch} samples",
            "at_most": float(cal.budget), "unit": unit, "upper_bound": _r(cal.cost_bound), "delta": cal.deltas.get("cost"),
        })
    if cal.max_drop is not None:
        guarantees.append({
            "what": "accuracy drop against the last exit", "at_most": float(cal.max_drop), "unit": "share",
            "upper_bound": _r(cal.drop_bound), "delta": cal.deltas.get("drop"),
            "loss": "harm: the policy is wrong where the last exit is right (its mean bounds the drop)",
        })
    if cal.max_disagreement is not None:
        guarantees.append({
            "what": "disagreement with the last exit's prediction", "at_most": float(cal.max_disagreement), "unit": "share",
            "upper_bound": _r(cal.disagreement_bound), "delta": cal.deltas.get("disagreement"),
        })
    return {
        "confidence": float(confidence),
        "delta": float(cal.delta),
        "guarantees": guarantees,
        "deploy_batch": cal.deploy_batch,
        "calibration": {"rows": int(cal.n), "fit_rows": fit_rows, "share": float(share), "seed": int(seed), "rows_sha256": rows_digest(cal_mask, sha)},
        "shift": None if cal.shift is None else float(cal.shift),
        "bound": BOUNDS,
        "procedure": PROCEDURE,
        "assumes": ASSUMES,
    }


def _r(v):
    return None if v is None else float(v)


def certify_existing(policy: dict, feats: ExitFeatures, *, confidence: float, seed: int = 0, deploy_batch: int | None = None,
                     deltas: dict | None = None) -> dict:
    """Upper confidence bounds for an existing policy's expected cost, accuracy drop and
    disagreement on ``feats`` (rows the policy was not fitted or calibrated on, for the
    bounds to hold; on its own calibration rows they reproduce its certificate)."""
    from eenet_cli.core.policy import policy_features

    costs = np.asarray(policy["costs"]["costs"], dtype=np.float64)
    feats = policy_features(policy, feats)  # a policy with pooled outputs is judged on its own predictions
    scores = compute_scores(policy["scorer"], feats)
    return certify_policy(
        scores, policy["thresholds"], costs,
        correct=feats.correct if feats.labels is not None else None, preds=feats.preds,
        delta=deltas if deltas is not None else 1.0 - confidence, seed=seed, deploy_batch=deploy_batch,
    )
