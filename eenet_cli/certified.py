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
from collections.abc import Callable

import numpy as np

from eenet_cli.core.certify import Infeasible, calibrate, certify_policy, shift_grid
from eenet_cli.core.figures import validation_figures
from eenet_cli.core.measures import ExitFeatures
from eenet_cli.core.methods import FitCache, fit_method
from eenet_cli.core.policy import compute_scores
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
    calibration_share: float = 0.5,
    seed: int = 0,
    hyper=None,
    progress: Callable | None = None,
    learner=None,
    predictions_sha256: str = "",
) -> dict:
    """A policy of ``method`` whose requested levels hold with probability >=
    ``confidence`` over the calibration rows (``confidence=None``: the same choice made on
    the empirical figures alone, on every validation row, with no statement of confidence)."""
    costs = np.asarray(costs, dtype=np.float64)
    n = feats.num_samples
    if budget is None and max_drop is None and max_disagreement is None:
        raise InputError("give --budget, --max-drop or --max-disagreement", field="--budget")
    # the policy the shift moves is fitted at the budget, or without one halfway up the costs
    base_budget = budget if budget is not None else float(costs[0] + 0.5 * (costs[-1] - costs[0]))
    if confidence is None:
        fit_mask = cal_mask = np.ones(n, dtype=bool)
    else:
        cal_mask = calibration_split(n, calibration_share, seed)
        fit_mask = ~cal_mask
        if fit_mask.sum() < 20 or cal_mask.sum() < 20:
            raise InputError(f"{n} validation rows are too few to fit on one part and certify on the other (at least 40)", field="--confidence")
    fit_feats, cal_feats = feats.subset(fit_mask), feats.subset(cal_mask)
    policy = fit_method(method, FitCache(fit_feats), costs, base_budget, unit, seed=seed, hyper=hyper, progress=progress, learner=learner)
    fit_scores = compute_scores(policy["scorer"], fit_feats)
    grid = shift_grid(fit_scores, policy["thresholds"], costs=costs)
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
    policy["threshold_fit"] = {**policy.get("threshold_fit", {}), "shift": shift, "fitted_at_budget": base_budget}
    return policy


def empirical_shift(scores, thresholds, costs, grid, feats: ExitFeatures, budget, max_drop, max_disagreement, unit):
    """The shift chosen on the validation figures alone (no confidence): within the budget
    the most accurate, with only loss limits the cheapest, that meets every limit."""
    from eenet_cli.core.certify import exits_for_shifts, shifted_thresholds

    exits = exits_for_shifts(scores, thresholds, grid).astype(np.int64)  # [n, G]
    rows = np.arange(feats.num_samples)[:, None]
    cost = costs[exits].mean(axis=0)
    ok = np.ones(grid.size, dtype=bool)
    if budget is not None:
        ok &= cost <= budget * (1 + 1e-12)
    last_pred = feats.preds[:, -1][:, None]
    if max_drop is not None:
        if feats.labels is None:
            raise InputError("--max-drop needs labels; --max-disagreement does not", field="--max-drop")
        harm = ~feats.correct[rows, exits] & feats.correct[:, -1][:, None]
        ok &= harm.mean(axis=0) <= max_drop
    if max_disagreement is not None:
        ok &= (feats.preds[rows, exits] != last_pred).mean(axis=0) <= max_disagreement
    if not ok.any():
        raise WorkFailed("no shift of this policy meets every limit on the validation rows; loosen a limit or raise the budget")
    j = int(np.flatnonzero(ok)[-1] if budget is not None else np.flatnonzero(ok)[np.argmin(cost[ok])])
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
    costs = np.asarray(policy["costs"]["costs"], dtype=np.float64)
    scores = compute_scores(policy["scorer"], feats)
    return certify_policy(
        scores, policy["thresholds"], costs,
        correct=feats.correct if feats.labels is not None else None, preds=feats.preds,
        delta=deltas if deltas is not None else 1.0 - confidence, seed=seed, deploy_batch=deploy_batch,
    )
