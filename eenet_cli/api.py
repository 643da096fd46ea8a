"""The Python API: the same operations as the commands, on arrays and dicts.

>>> from eenet_cli.synthetic import make_predictions
>>> d = make_predictions(num_samples=600, num_exits=3, num_classes=5, seed=1)
>>> preds = predictions_from_arrays(d.logits, d.labels, split=d.split, costs=d.costs, unit="ms")
>>> policy = fit_policy(preds, budget="2ms", method="maxprob")
>>> policy["validation"]["avg_cost"] <= 2.0
True
>>> summary = apply_policy(policy, preds.rows(preds.split == "test")).summary
>>> 0.0 <= summary["accuracy"] <= 1.0
True
>>> results = evaluate(preds, budgets=["1.5ms", "2.5ms"], methods=["maxprob", "oracle"])
>>> [(r["method"], r["budget"]) for r in results["results"]]
[('maxprob', 1.5), ('oracle', 1.5), ('maxprob', 2.5), ('oracle', 2.5)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eenet_cli.artifacts.costs import (
    Costs,
    default_budgets,
    load_costs,
    parse_budget,
    parse_budgets,
    validate_costs,
)
from eenet_cli.artifacts.files import CREATED_BY
from eenet_cli.artifacts.predictions import (
    Predictions,
    read_predictions,
    validate_predictions,
)
from eenet_cli.core.measures import ExitFeatures
from eenet_cli.core.methods import DEFAULT_EVALUATE_METHODS
from eenet_cli.core.policy import Applied as AppliedPolicy
from eenet_cli.core.splits import stratified_mask
from eenet_cli.errors import InputError

KNOWN_SPLITS = ("train", "val", "test")


def load_predictions(path: str) -> Predictions:
    """Read and validate a predictions file or folder of part files (docs/spec.md §2.1).

    Streamed: only the per-exit features are kept (full scores are read again only if a
    method asks for them); a compact file (§2.1.1) gives the same features."""
    return read_predictions(path, stream=True)


def predictions_from_arrays(
    scores: np.ndarray,
    labels: np.ndarray | None,
    *,
    split: np.ndarray | None = None,
    costs: Sequence[float] | None = None,
    unit: str = "ms",
    scores_kind: str = "logits",
) -> Predictions:
    """Wrap in-memory arrays ``[N, K, C]`` as :class:`Predictions` (validated)."""
    meta: dict[str, Any] = {"format": "predictions", "version": 1, "scores": scores_kind}
    if costs is not None:
        meta["costs"] = {"format": "costs", "version": 1, "unit": unit, "costs": list(map(float, costs))}
    p = Predictions(
        scores=np.asarray(scores, dtype=np.float32),
        labels=None if labels is None else np.asarray(labels, dtype=np.int64),
        split=None if split is None else np.asarray(split, dtype=object),
        sample_id=None,
        meta=meta,
        source="<arrays>",
    )
    validate_predictions(p)
    return p


def resolve_costs(preds: Predictions, spec: str | Costs | Sequence[float] | None) -> Costs:
    """Costs by docs/spec.md §2.2 precedence, checked against the predictions' exits."""
    if isinstance(spec, Costs):
        costs = spec
    elif spec is not None and not isinstance(spec, str):
        costs = validate_costs(list(map(float, spec)), "ms", "costs")
    else:
        costs = load_costs(spec, preds.meta, preds.source)
    if costs is None:
        raise InputError(
            "no costs: pass --costs costs.json (from `eenet profile`), --costs 1.2,2.5,3.7ms, "
            "or embed eenet.costs in the predictions",
            source=preds.source,
        )
    if costs.num_exits != preds.num_exits:
        raise InputError(
            f"has {costs.num_exits} costs but the predictions have {preds.num_exits} exits",
            source=costs.source,
            field="costs",
        )
    return costs


def _check_splits(preds: Predictions) -> None:
    if preds.split is None:
        return
    values = set(np.unique(preds.split).tolist())
    unknown = sorted(values - set(KNOWN_SPLITS))
    if unknown:
        raise InputError(f"unknown split value(s) {unknown}; expected train, val or test", source=preds.source, field="split")


def _require_labels(preds: Predictions, what: str) -> None:
    if preds.labels is None:
        raise InputError(f"{what} needs a label column", source=preds.source, field="label")


def validation_rows(preds: Predictions) -> Predictions:
    """The rows ``fit`` learns from: the ``val`` split, or every row without a split column."""
    _check_splits(preds)
    if preds.split is None:
        return preds
    mask = preds.split == "val"
    if not mask.any():
        raise InputError("no rows with split 'val' to fit on", source=preds.source, field="split")
    return preds.rows(mask)


def split_for_evaluation(
    preds: Predictions, test_preds: Predictions | None = None, val_fraction: float | None = None, seed: int = 0
) -> tuple[ExitFeatures, ExitFeatures, str]:
    """(validation features, test features, how the split was made), following docs/spec.md §2.1.

    Features are computed once over the whole file and then split by row, so the logits
    are never copied per split.
    """
    _require_labels(preds, "evaluate")
    if test_preds is not None:
        _require_labels(test_preds, "evaluate")
        if (test_preds.num_exits, test_preds.num_classes) != (preds.num_exits, preds.num_classes):
            raise InputError(
                f"test file has {test_preds.num_exits} exits × {test_preds.num_classes} classes, validation file "
                f"{preds.num_exits} × {preds.num_classes}",
                source=test_preds.source,
            )
        return preds.features(), test_preds.features(), f"validation from {preds.source}, test from {test_preds.source}"
    if val_fraction is not None:
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"must be between 0 and 1, got {val_fraction}", field="--val-fraction")
        val = stratified_mask(preds.labels, val_fraction, seed)
        how = f"seeded stratified split: {val_fraction:g} validation (seed {seed})"
        test = ~val
    else:
        if preds.split is None:
            raise InputError(
                "has no split column: pass --val A --test B, or --val-fraction F for a seeded split",
                source=preds.source,
                field="split",
            )
        _check_splits(preds)
        val = preds.split == "val"
        test = preds.split == "test"
        if not val.any():
            raise InputError("no rows with split 'val'", source=preds.source, field="split")
        if not test.any():
            raise InputError("no rows with split 'test'", source=preds.source, field="split")
        how = "split column (val / test)"
    feats = preds.features()
    return feats.subset(val), feats.subset(test), how


def _budget_value(budget: str | float, costs: Costs) -> float:
    if isinstance(budget, str):
        return parse_budget(budget, costs)
    from eenet_cli.artifacts.costs import check_feasible

    check_feasible(float(budget), costs)
    return float(budget)


def _learner_for(methods: Sequence[str]):
    """The EENet trainer when one of ``methods`` needs it, else None.

    The one place the torch trainer is wired into :mod:`eenet_cli.core` (which never
    imports it); imported only here, so ``eenet --help`` and baseline-only fits never
    import torch.
    """
    from eenet_cli.core.methods import EENET_METHODS

    if not any(m in EENET_METHODS for m in methods):
        return None
    from eenet_cli.learn.eenet_torch import train_eenet

    return train_eenet


def fit_policy(
    preds: Predictions,
    budget: str | float | None,
    *,
    method: str = "eenet",
    costs: str | Costs | Sequence[float] | None = None,
    seed: int = 0,
    hyper=None,
    progress: Callable | None = None,
    features: ExitFeatures | None = None,
    confidence: float | None = None,
    max_drop: float | None = None,
    max_disagreement: float | None = None,
    deploy_batch: int | None = None,
    calibration_share: float | None = None,
    outputs: str = "own",
) -> dict:
    """Fit a policy for ``budget`` on the validation rows; returns the policy dict (docs/spec.md §2.4).

    ``outputs`` (``own``, ``combined`` or ``auto``) lets exits predict with a combination of
    the exits so far (:mod:`eenet_cli.core.outputs`); the policy then carries it.

    With ``confidence`` (e.g. 0.9) the policy is certified (docs/certify.md): fitted on part
    of the validation rows, its thresholds shifted on the rest so that its expected cost on
    new data is at most ``budget`` (and its accuracy drop against the last exit at most
    ``max_drop``, its disagreement with the last exit at most ``max_disagreement``) with
    that probability; the policy carries a ``certificate``. ``max_drop`` or
    ``max_disagreement`` without ``confidence`` hold on the validation rows only.
    """
    from eenet_cli.core.methods import (
        POLICY_METHODS,
        FitCache,
        check_method,
        fit_method,
    )

    check_method(method, POLICY_METHODS)
    cost = resolve_costs(preds, costs)
    val = validation_rows(preds)
    b = _budget_value(budget, cost) if budget is not None else None
    certified = confidence is not None or max_drop is not None or max_disagreement is not None
    if not certified:
        _require_labels(val, "fit")
        if b is None:
            raise InputError("give a budget (or --max-drop / --max-disagreement)", field="--budget")
    elif max_drop is not None or b is not None:
        _require_labels(val, "fit")
    feats = features if features is not None else val.features()
    block = None
    if outputs != "own":
        from eenet_cli.core.outputs import combine, fit_outputs

        _require_labels(val, "fit")
        if not certified:  # a certified fit pools with weights from its fit rows only
            block = fit_outputs(feats, outputs, seed=seed)
            feats = combine(feats, block)
    if certified:
        from eenet_cli.certified import check_level, fit_certified

        check_level("confidence", confidence, "--confidence")
        check_level("max_drop", max_drop, "--max-drop")
        check_level("max_disagreement", max_disagreement, "--max-disagreement")
        if calibration_share is not None:
            check_level("calibration_share", calibration_share, "--calibration-share")
        if deploy_batch is not None and (confidence is None or b is None or int(deploy_batch) < 1):
            raise InputError("needs --confidence, a --budget and a positive number of samples", field="--deploy-batch")
        policy = fit_certified(
            method, feats, cost.values, cost.unit, budget=b, confidence=confidence, max_drop=max_drop,
            max_disagreement=max_disagreement, deploy_batch=deploy_batch, calibration_share=calibration_share,
            seed=seed, hyper=hyper, progress=progress, learner=_learner_for([method]), predictions_sha256=preds.sha256,
            outputs=outputs,
        )
    else:
        policy = fit_method(
            method, FitCache(feats), cost.values, b, cost.unit, seed=seed, hyper=hyper, progress=progress,
            learner=_learner_for([method]),
        )
    if block is not None:
        from eenet_cli.core.outputs import attach_outputs

        attach_outputs(policy, block)
    policy["costs"] = cost.brief()
    policy.setdefault("training", {})
    policy["training"] = {"seed": seed, **policy["training"]}
    policy["provenance"] = {"predictions_sha256": preds.sha256, "created_by": CREATED_BY}
    return policy


@dataclass
class Applied(AppliedPolicy):
    """What a policy decided for each sample (:class:`eenet_cli.core.policy.Applied`), and
    the summary ``apply`` reports: accuracy, average cost, exit fractions, budget met."""

    summary: dict = field(default_factory=dict)

    @property
    def exit_scores(self) -> np.ndarray:
        """Each sample's score at the exit it took."""
        return self.exit_score()


def check_policy_fits(policy: dict, preds: Predictions, source: str = "policy") -> None:
    if policy.get("num_exits") != preds.num_exits:
        raise InputError(
            f"policy is for {policy.get('num_exits')} exits but the predictions have {preds.num_exits}", source=source, field="num_exits"
        )
    if policy.get("num_classes") != preds.num_classes:
        raise InputError(
            f"policy is for {policy.get('num_classes')} classes but the predictions have {preds.num_classes}",
            source=source,
            field="num_classes",
        )


def apply_policy(policy: dict, preds: Predictions, *, source: str = "policy") -> Applied:
    """Run a policy over predictions with numpy alone (Algorithm 2, offline)."""
    from eenet_cli.core.policy import apply_to_features
    from eenet_cli.core.thresholds import realised_cost, within_budget

    check_policy_fits(policy, preds, source)
    feats = preds.features()
    a = apply_to_features(policy, feats)
    costs = np.asarray(policy["costs"]["costs"], dtype=np.float64)
    avg = realised_cost(a.exits, costs)  # exactly c_k when every sample takes exit k
    budget = (policy.get("budget") or {}).get("value")
    summary = {
        "method": policy.get("method"),
        "n": int(feats.num_samples),
        "accuracy": None if a.correct is None else float(a.correct.mean()),
        "avg_cost": avg,
        "unit": policy["costs"]["unit"],
        "budget": budget,
        "budget_met": None if budget is None else within_budget(avg, budget),
        "exit_fractions": a.exit_fractions(feats.num_exits),
    }
    return Applied(exits=a.exits, scores=a.scores, preds=a.preds, correct=a.correct, summary=summary)


DEFAULT_METHODS = tuple(DEFAULT_EVALUATE_METHODS)


def evaluate(
    preds: Predictions,
    *,
    budgets: Sequence[str | float] | str | None = None,
    methods: Sequence[str] | None = None,
    costs: str | Costs | Sequence[float] | None = None,
    test: Predictions | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    hyper=None,
    on_step: Callable[[str, float], None] | None = None,
    confidence: float | None = None,
    resplits: int = 0,
    note: Callable[[str], None] | None = None,
    outputs: str = "own",
) -> dict:
    """Accuracy vs budget for each method (docs/spec.md §2.5); returns the results document.

    On compact predictions (docs/spec.md §2.1.1) every method runs with its default
    settings; with ``hyper.inputs == "full"`` (EENet's full-vector scorer) the default
    methods leave out EENet's, saying so through ``note`` (default: one line on stderr), and
    naming such a method explicitly is refused in one line.

    ``outputs`` (``own``, ``combined`` or ``auto``) lets the learned methods predict with
    combined exit outputs (docs/outputs.md); the document then carries ``outputs`` in its
    header and in every record."""
    from eenet_cli.core.evaluate import evaluate_features
    from eenet_cli.core.methods import ALL_METHODS, check_method

    cost = resolve_costs(preds, costs)
    if isinstance(budgets, str):
        values = parse_budgets(budgets, cost)
    elif budgets is None:
        values = default_budgets(cost)
    else:
        values = [_budget_value(b, cost) for b in budgets]
    methods, left_out = _default_methods_for(preds, test, list(methods) if methods else list(DEFAULT_METHODS), hyper)
    for m in methods:
        check_method(m, ALL_METHODS)
    val, tst, how = split_for_evaluation(preds, test, val_fraction, seed)
    if left_out:  # said once the inputs have passed their checks, so bad input gets exactly one line
        if note is not None:
            note(left_out)
        else:
            import sys

            print(left_out, file=sys.stderr)
    learner = _learner_for(methods)
    fitter = _certified_fitter(cost, confidence, seed, hyper, learner) if confidence is not None else None
    records, _ = evaluate_features(
        val, tst, cost.values, cost.unit, values, methods, seed=seed, hyper=hyper, on_step=on_step,
        learner=learner, fitter=fitter, outputs=outputs,
    )
    return {
        "format": "results",
        "version": 1,
        "created_by": CREATED_BY,
        "predictions_sha256": preds.sha256 if test is None else [preds.sha256, test.sha256],
        "num_exits": preds.num_exits,
        "num_classes": preds.num_classes,
        "costs": cost.brief(),
        "costs_source": cost.source,
        "split": how,
        "val_fraction": val_fraction if test is None else None,
        "seed": seed,
        **({"eenet_inputs": getattr(hyper, "inputs", "compact") if hyper is not None else "compact"}
           if any(m.startswith("eenet") for m in methods) else {}),
        **({"outputs": outputs} if outputs != "own" else {}),
        **({"confidence": confidence} if confidence is not None else {}),
        **({"resplits": resplit_check(val, tst, cost, values, methods, confidence, resplits, seed, hyper, learner)} if resplits else {}),
        "results": records,
    }


def _default_methods_for(preds: Predictions, test: Predictions | None, methods: list[str], hyper=None) -> tuple[list[str], str]:
    """The default method list (evaluate's own, or the same list passed in) without the
    methods whose scorer needs full score vectors when the predictions are compact (EENet's
    with ``hyper.inputs == "full"`` only), and the note saying so ("" when nothing is left out)."""
    from eenet_cli.core.methods import METHODS

    full_inputs = hyper is not None and getattr(hyper, "inputs", "compact") == "full"
    if not full_inputs or methods != list(DEFAULT_METHODS) or not (preds.compact or (test is not None and test.compact)):
        return methods, ""
    full = [m for m in methods if METHODS[m].scorer == "eenet"]
    if not full:
        return methods, ""
    src = test.source if test is not None and test.compact and not preds.compact else preds.source
    line = (f"note: {src} holds compact predictions; left out {', '.join(full)} "
            f"({'its scorer reads' if len(full) == 1 else 'their scorers read'} full class-probability vectors)")
    return [m for m in methods if m not in full], line


def _certified_fitter(cost: Costs, confidence: float, seed: int, hyper, learner):
    """``fitter(method, cache, budget)`` for :func:`evaluate_features`: certified policies."""
    from eenet_cli.certified import check_level, fit_certified

    check_level("confidence", confidence, "--confidence")

    def fit(method, cache, budget):
        return fit_certified(method, cache.features, cost.values, cost.unit, budget=budget, confidence=confidence,
                             seed=seed, hyper=hyper, learner=learner)

    return fit


def resplit_check(val: ExitFeatures, tst: ExitFeatures, cost: Costs, budgets, methods, confidence, draws: int, seed: int, hyper, learner) -> list[dict]:
    """The product's own test of its guarantee: ``draws`` times, pool the validation and
    test rows, redraw a stratified half as validation, fit (certified with ``confidence``,
    else plain) on it and count how often the test cost overruns the budget. Per method:
    draws, overruns and their share, beside the δ a certified policy promises."""
    from eenet_cli.core.evaluate import test_figures
    from eenet_cli.core.measures import concat_features
    from eenet_cli.core.methods import FitCache, fit_method

    if draws < 1:
        raise InputError(f"must be at least 1, got {draws}", field="--resplits")
    pool = concat_features([val, tst])
    fitter = _certified_fitter(cost, confidence, seed, hyper, learner) if confidence is not None else None
    out = []
    for method in [m for m in methods if m != "oracle"]:
        over = []
        for r in range(draws):
            mask = stratified_mask(pool.labels, 0.5, seed + 1 + r)
            v, t = pool.subset(mask), pool.subset(~mask)
            for b in budgets:
                cache = FitCache(v)
                policy = fitter(method, cache, b) if fitter else fit_method(method, cache, cost.values, b, cost.unit, seed=seed, hyper=hyper, learner=learner)
                over.append(test_figures(policy, t, cost.values)["avg_cost"] > b * (1 + 1e-9))
        out.append({"method": method, "draws": draws * len(budgets), "overruns": int(sum(over)), "overrun_share": float(np.mean(over)),
                    "delta": None if confidence is None else 1.0 - confidence})
    return out
