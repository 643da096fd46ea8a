"""``eenet plot`` and :mod:`eenet_cli.plotting`: real figures from real files.

Inputs are made the way a user makes them: synthetic predictions written to Parquet, then
``eenet evaluate`` and ``eenet fit`` through the CLI. Figures are checked by file type
(magic bytes), size, pixel variance, and by inspecting the matplotlib objects the plotting
functions return.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE, invoke, write_synthetic

matplotlib = pytest.importorskip("matplotlib")

from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from eenet_cli import plotting  # noqa: E402
from eenet_cli.io import read_predictions, read_results  # noqa: E402

METHODS = ["maxprob", "entropy", "oracle"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Predictions (4 exits, 10 classes), a results file and a maxprob policy, via the CLI."""
    from typer.testing import CliRunner

    d = tmp_path_factory.mktemp("plot")
    runner = CliRunner()
    preds = write_synthetic(d / "preds.parquet", n=800)
    results = d / "results.json"
    r = invoke(runner, "evaluate", preds, "--methods", ",".join(METHODS), "-o", results, "-q")
    assert r.exit_code == 0, r.output
    policy = d / "policy.json"
    r = invoke(runner, "fit", preds, "--budget", "60%", "--method", "maxprob", "-o", policy, "-q")
    assert r.exit_code == 0, r.output
    return {"dir": d, "preds": preds, "results": results, "policy": policy}


def _png_ok(path: Path, width: int | None = None, height: int | None = None) -> np.ndarray:
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:4] == b"\x89PNG"
    assert 10_000 < len(data) < 5_000_000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img[..., :3].std() > 0.05  # not blank
    if width is not None:
        assert img.shape[1] == width and img.shape[0] == height
    return img


def _one_error_line(r, *needles: str) -> None:
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("eenet: error:") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") or p.suffix in (".png", ".svg", ".pdf", ".jpg", ".tmp"))


# --------------------------------------------------------------------------- through the CLI


def test_tradeoff_png_from_results_file(runner, files, tmp_path):
    out = tmp_path / "t.png"
    r = invoke(runner, "plot", files["results"], "-o", out)
    assert r.exit_code == 0, r.output
    _png_ok(out, 1050, 675)  # 7 x 4.5 in at 150 dpi
    assert "wrote" in r.stderr


def test_svg_and_pdf_by_extension_and_same_bytes_twice(runner, files, tmp_path):
    for ext, magic in (("svg", (b"<?xml", b"<svg")), ("pdf", (b"%PDF",))):
        a, b = tmp_path / f"a.{ext}", tmp_path / f"b.{ext}"
        for out in (a, b):
            r = invoke(runner, "plot", files["results"], "--kind", "exits", "-o", out, "-q")
            assert r.exit_code == 0, r.output
        data = a.read_bytes()
        assert data.lstrip().startswith(magic[0]) and magic[-1] in data[:2000]
        assert len(data) > 5_000
        assert data == b.read_bytes(), ext  # deterministic output


def test_policy_and_predictions_give_scores_in_any_order(runner, files, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    r = invoke(runner, "plot", files["policy"], files["preds"], "-o", a)
    assert r.exit_code == 0, r.output
    assert "scores:" in r.stderr and "split test" in r.stderr
    assert invoke(runner, "plot", files["preds"], files["policy"], "-o", b, "-q").exit_code == 0
    _png_ok(a)
    assert a.read_bytes() == b.read_bytes()  # seeded jitter: same picture


def test_separation_and_split_val(runner, files, tmp_path):
    out = tmp_path / "sep.png"
    r = invoke(runner, "plot", files["policy"], files["preds"], "--kind", "separation", "--classes", "3", "--split", "val",
               "--title", "my title", "-o", out)
    assert r.exit_code == 0, r.output
    assert "split val" in r.stderr
    _png_ok(out)


def test_exits_budget_picks_the_nearest(runner, files, tmp_path):
    doc = read_results(files["results"])
    budgets = sorted({r["budget"] for r in doc["results"]})
    out = tmp_path / "e.png"
    r = invoke(runner, "plot", files["results"], "--kind", "exits", "--budget", f"{budgets[2] + 0.01:g}ms", "-o", out)
    assert r.exit_code == 0, r.output
    assert f"budget {budgets[2]:g}ms (nearest to" in r.stderr
    r = invoke(runner, "plot", files["results"], "--kind", "exits", "-o", out)
    assert f"budget {budgets[(len(budgets) - 1) // 2]:g}ms (median budget)" in r.stderr


def test_results_as_csv_and_parquet_render(runner, files, tmp_path):
    for ext in ("csv", "parquet"):
        res = tmp_path / f"r.{ext}"
        assert invoke(runner, "evaluate", files["preds"], "--methods", "maxprob,oracle", "--budgets", "2ms,3ms,4ms", "-o", res, "-q").exit_code == 0
        out = tmp_path / f"{ext}.png"
        r = invoke(runner, "plot", res, "--dpi", "100", "-o", out, "-q")
        assert r.exit_code == 0, r.output
        _png_ok(out, 700, 450)  # --dpi sets the pixel size


def test_eenet_scorer_with_unbounded_scores(runner, files, tmp_path):
    """A policy whose scorer is EENet's network (random weights): scores far outside [0, 1]."""
    pol = json.loads(files["policy"].read_text())
    k, c = pol["num_exits"], pol["num_classes"]
    rng = np.random.default_rng(3)
    pol["method"] = "eenet"
    pol.pop("threshold_fit", None)
    pol["scorer"] = {"type": "eenet", "exits": [
        {"shared_weight": (3 * rng.standard_normal((6, c + 3 + j))).tolist(), "shared_bias": rng.standard_normal(6).tolist(),
         "utility_weight": (4 * rng.standard_normal(6)).tolist(), "utility_bias": 1.0,
         "assign_weight": rng.standard_normal(6).tolist(), "assign_bias": 0.0}
        for j in range(k)]}
    pol["thresholds"] = [5.0, None, -1e300, None]
    path = tmp_path / "eenet.json"
    path.write_text(json.dumps(pol))
    for kind in ("scores", "separation"):
        out = tmp_path / f"{kind}.png"
        r = invoke(runner, "plot", path, files["preds"], "--kind", kind, "-o", out, "-q")
        assert r.exit_code == 0, r.output
        _png_ok(out)


# --------------------------------------------------------------------------- the figures themselves


def test_tradeoff_has_one_line_per_method_and_references(files):
    doc = read_results(files["results"])
    fig = plotting.tradeoff_figure(doc["results"], unit="ms", costs=doc["costs"]["costs"])
    ax = fig.axes[0]
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels.count("maxprob") == 1 and labels.count("entropy") == 1
    oracle = [ln for ln in ax.get_lines() if ln.get_label().startswith("oracle")]
    assert len(oracle) == 1 and oracle[0].get_linestyle() == "--"
    method_lines = [ln for ln in ax.get_lines() if ln.get_label() in ("maxprob", "entropy")]
    assert all(len(ln.get_xdata()) == 10 for ln in method_lines)  # one point per budget
    full = [ln for ln in ax.get_lines() if ln.get_label().startswith("full model")]
    at_top = [r for r in doc["results"] if r["budget"] == 4.0 and r["method"] == "maxprob"][0]
    assert len(full) == 1 and np.allclose(full[0].get_ydata(), 100 * at_top["accuracy"])
    overruns = sum(not r["budget_met"] for r in doc["results"])
    marks = [c for c in ax.collections if c.get_label().startswith("budget overrun")]
    assert (len(marks) == 1 and len(marks[0].get_offsets()) == overruns) if overruns else not marks
    assert "ms" in ax.get_xlabel() and "%" in ax.get_ylabel()
    assert ax.get_legend() is not None


def test_tradeoff_edge_cases_one_method_one_budget_overrun_no_costs():
    rec = [{"method": "vote", "budget": 2.0, "unit": "ms", "accuracy": 0.7, "avg_cost": 2.2, "budget_met": False,
            "exit_fractions": [0.5, 0.5, 0.0]}]
    fig = plotting.tradeoff_figure(rec, unit="ms", costs=None)
    ax = fig.axes[0]
    assert [ln.get_label() for ln in ax.get_lines()] == ["vote"]  # no full-model line: nothing to find it from
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 1
    fig.canvas.draw()  # renders without error
    # no budget >= c_K, but a record that sent every sample to the last exit still gives the full model
    rec.append({"method": "vote", "budget": 2.9, "unit": "ms", "accuracy": 0.9, "avg_cost": 2.9, "budget_met": True,
                "exit_fractions": [0.0, 0.0, 1.0]})
    fig = plotting.tradeoff_figure(rec, unit="ms", costs=[1.0, 2.0, 3.0], budget=2.5)
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["vote", "full model (90.0%)", "budget 2.5 ms"]
    assert plotting.full_model_accuracy(rec[:1], [1.0, 2.0, 3.0]) is None


def test_full_model_taken_at_the_largest_budget_at_or_over_c_k():
    rec = [{"method": m, "budget": b, "accuracy": a, "avg_cost": min(b, 3.0), "budget_met": True}
           for m, b, a in (("maxprob", 3.0, 0.91), ("maxprob", 5.0, 0.92), ("oracle", 5.0, 0.99), ("maxprob", 2.0, 0.5))]
    assert plotting.full_model_accuracy(rec, [1.0, 2.0, 3.0]) == pytest.approx(0.92)


def test_exits_figure_stacks_one_segment_per_exit_and_method(files):
    doc = read_results(files["results"])
    budget = plotting.nearest_budget(doc["results"], 2.4)
    fig = plotting.exits_figure(doc["results"], budget, unit="ms")
    ax = fig.axes[0]
    bars = [p for c in ax.containers for p in c.patches]
    k = doc["num_exits"]
    assert len(ax.containers) == k and len(bars) == k * len(METHODS)
    tops = np.zeros(len(METHODS))
    for cont in ax.containers:
        tops += [p.get_height() for p in cont.patches]
    assert np.allclose(tops, 100.0, atol=1e-6)  # each method's bar is all its samples
    assert [t.get_text() for t in ax.get_xticklabels()] == ["maxprob", "entropy", "oracle"]
    assert ax.get_legend() is not None and len(ax.get_legend().get_texts()) == k


def test_exits_figure_single_method():
    rec = [{"method": "maxprob", "budget": 2.0, "accuracy": 0.8, "avg_cost": 2.1, "budget_met": False, "exit_fractions": [0.4, 0.6]}]
    fig = plotting.exits_figure(rec, plotting.nearest_budget(rec, None), unit="ms")
    assert len(fig.axes[0].patches) == 2
    assert any("2.10 ms (over)" in t.get_text() for t in fig.axes[0].texts)


def _scores_inputs(preds_path, policy):
    from eenet_cli.core.policy import compute_scores
    from eenet_cli.core.thresholds import apply_thresholds

    p = read_predictions(preds_path)
    f = p.features()
    s = compute_scores(policy["scorer"], f)
    return s, p.labels, f.correct, apply_thresholds(s, policy["thresholds"])


def _threshold_lines(fig) -> list[Line2D]:
    return [ln for ax in fig.axes for ln in ax.get_lines() if (ln.get_gid() or "").startswith("threshold")]


def test_scores_figure_draws_each_drawable_threshold(files):
    policy = json.loads(files["policy"].read_text())
    scores, labels, correct, exits = _scores_inputs(files["preds"], policy)
    fig = plotting.scores_figure(scores, labels, correct, exits, policy["thresholds"], scorer_type="maxprob")
    k = policy["num_exits"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == k
    lines = _threshold_lines(fig)
    drawable = [t for t in policy["thresholds"] if t is not None]
    assert len(lines) == len(drawable) == k - 1
    for ln, t in zip(lines, drawable):
        y = ln.get_ydata()
        assert np.allclose(y, t) and ln.get_xdata()[0] == 0 and ln.get_xdata()[-1] == 1  # horizontal, full width
    titles = [ax.get_title() for ax in panels]
    shares = np.bincount(exits, minlength=k) / exits.size
    for title, share in zip(titles, shares):
        assert f"{100 * share:.1f}% exit here" in title
    # every sample appears once per panel: already-exited, right or wrong
    for ax in panels:
        assert sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)) == labels.size


def test_scores_figure_null_and_accept_all_thresholds_are_annotated_not_drawn(files):
    policy = json.loads(files["policy"].read_text())
    scores, labels, correct, _ = _scores_inputs(files["preds"], policy)
    from eenet_cli.core.thresholds import apply_thresholds

    thresholds = [0.6, None, -1e300, None]
    exits = apply_thresholds(scores, thresholds)
    fig = plotting.scores_figure(scores, labels, correct, exits, thresholds)
    assert len(_threshold_lines(fig)) == 1
    notes = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "none stop here" in notes and "all remaining stop" in notes
    ylim = fig.axes[0].get_ylim()
    assert ylim[0] > -10  # -1e300 never reaches the axes


def test_scores_figure_many_classes_is_capped_and_seeded(tmp_path):
    p = read_predictions(write_synthetic(tmp_path / "big.parquet", n=7000, k=3, c=40, costs=(1.0, 2.0, 3.0)))
    f = p.features()
    scores = f.max_prob.astype(np.float64)
    from eenet_cli.core.thresholds import apply_thresholds

    thresholds = [0.5, 0.5, None]
    exits = apply_thresholds(scores, thresholds)
    figs = [plotting.scores_figure(scores, p.labels, f.correct, exits, thresholds, max_points=2500) for _ in range(2)]
    for ax in [a for a in figs[0].axes if a.get_visible()]:
        assert sum(len(c.get_offsets()) for c in ax.collections) == 2500
        assert "sorted by full-model accuracy" in ax.get_xlabel() or not ax.get_xlabel()
    a = np.concatenate([c.get_offsets() for c in figs[0].axes[0].collections])
    b = np.concatenate([c.get_offsets() for c in figs[1].axes[0].collections])
    assert np.array_equal(a, b)
    assert "2,500 of 7,000" in figs[0]._suptitle.get_text()


def test_separation_figure_classes_and_threshold(files):
    policy = json.loads(files["policy"].read_text())
    scores, labels, correct, _ = _scores_inputs(files["preds"], policy)
    f = read_predictions(files["preds"]).features()
    fig = plotting.separation_figure(f.max_prob[:, 0], scores[:, 0], labels, correct[:, 0], [3, 1, 7],
                                     scorer_type="maxprob", threshold=policy["thresholds"][0])
    left, right = fig.axes
    assert [t.get_text() for t in left.get_xticklabels()] == ["3", "1", "7"]
    shown = int(np.isin(labels, [3, 1, 7]).sum())
    assert sum(len(c.get_offsets()) for c in left.collections) == shown
    assert "AUROC" in left.get_title() and "AUROC" in right.get_title()
    assert len(_threshold_lines(fig)) == 1 and _threshold_lines(fig)[0].axes is right


def test_auroc_matches_pairwise_definition(rng):
    s = np.round(rng.normal(size=200), 1)
    y = rng.random(200) < 0.6
    pos, neg = s[y], s[~y]
    expected = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert plotting._auroc(s, y) == pytest.approx(expected)
    assert plotting._auroc(s, np.ones(200, bool)) is None


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_files(files):
    d = files["dir"]
    costs = d / "costs.json"
    costs.write_text(json.dumps({"format": "costs", "version": 1, "unit": "ms", "costs": [1, 2, 3, 4]}))
    text = d / "notes.txt"
    text.write_text("hello, not JSON\n")
    three = write_synthetic(d / "three.parquet", n=200, k=3, costs=(1.0, 2.0, 3.0))
    five = write_synthetic(d / "five.parquet", n=200, c=5)
    return {"costs": costs, "text": text, "three": three, "five": five}


@pytest.mark.parametrize("args, needles", [
    (["{policy}", "-o", "{out}/x.png"], ["policy.json", "a policy alone cannot be plotted"]),
    (["{preds}", "-o", "{out}/x.png"], ["preds.parquet", "predictions alone cannot be plotted"]),
    (["{policy}", "{preds}", "--kind", "tradeoff", "-o", "{out}/x.png"], ["needs a results file"]),
    (["{results}", "--kind", "scores", "-o", "{out}/x.png"], ["needs a policy JSON and predictions"]),
    (["{costs}", "-o", "{out}/x.png"], ["costs.json", "is a costs file"]),
    (["{text}", "-o", "{out}/x.png"], ["notes.txt", "not valid JSON"]),
    (["{out}/nothing.json", "-o", "{out}/x.png"], ["nothing.json: no such file"]),
    (["{results}", "-o", "{out}/x.jpg"], ["x.jpg", "use a .png, .svg or .pdf"]),
    (["{results}", "-o", "{out}/missing/x.png"], ["does not exist"]),
    (["{results}"], ["missing -o"]),
    (["{results}", "{results}", "-o", "{out}/x.png"], ["two results files"]),
    (["{results}", "{preds}", "-o", "{out}/x.png"], ["plotted on its own"]),
    (["{policy}", "{three}", "-o", "{out}/x.png"], ["policy is for 4 exits but the predictions have 3"]),
    (["{policy}", "{five}", "-o", "{out}/x.png"], ["policy is for 10 classes but the predictions have 5"]),
    (["{results}", "--kind", "pie", "-o", "{out}/x.png"], ["unknown kind 'pie'"]),
    (["{results}", "--split", "train", "-o", "{out}/x.png"], ["expected val or test"]),
    (["{results}", "--dpi", "5", "-o", "{out}/x.png"], ["--dpi"]),
    (["{results}", "--kind", "exits", "--budget", "soon", "-o", "{out}/x.png"], ["cannot read 'soon' as a budget"]),
    (["{policy}", "{preds}", "--classes", "0", "-o", "{out}/x.png"], ["--classes"]),
])
def test_bad_input_exits_2_with_one_line_and_no_file(runner, files, bad_files, tmp_path, args, needles):
    names = {**{k: v for k, v in files.items() if k != "dir"}, **bad_files, "out": tmp_path}
    r = invoke(runner, "plot", *[a.format(**names) for a in args])
    _one_error_line(r, *needles)
    assert _leftovers(tmp_path) == []


def test_csv_results_need_a_unit_for_percent_budgets(runner, files, tmp_path):
    res = tmp_path / "r.csv"
    assert invoke(runner, "evaluate", files["preds"], "--methods", "maxprob", "--budgets", "2ms,3ms", "-o", res, "-q").exit_code == 0
    r = invoke(runner, "plot", res, "--kind", "exits", "--budget", "60%", "-o", tmp_path / "x.png")
    _one_error_line(r, "give it with a unit")
    assert invoke(runner, "plot", res, "--kind", "exits", "--budget", "2.9ms", "-o", tmp_path / "x.png", "-q").exit_code == 0


def test_predictions_without_labels_are_refused(runner, files, tmp_path):
    import pyarrow.parquet as pq

    t = pq.read_table(files["preds"])
    nolab = tmp_path / "nolab.parquet"
    pq.write_table(t.drop_columns(["label"]), nolab)
    r = invoke(runner, "plot", files["policy"], nolab, "-o", tmp_path / "x.png")
    _one_error_line(r, "has no label column")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- help examples


@pytest.mark.skipif(not (SAMPLE / "digits.parquet").exists(), reason="sample data not built")
def test_help_examples_run(runner, tmp_path, monkeypatch):
    from eenet_cli.commands.plot_cmd import PLOT_HELP

    (tmp_path / "sample_data").symlink_to(SAMPLE)
    monkeypatch.chdir(tmp_path)
    lines = PLOT_HELP.split("Examples:")[1].strip().splitlines()
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "eenet"
        r = invoke(runner, *argv[1:], "-q") if argv[1] != "plot" else invoke(runner, *argv[1:])
        assert r.exit_code == 0, (line, r.output)
    for name in ("tradeoff.png", "exits.svg", "scores.png", "separation.pdf"):
        assert (tmp_path / name).stat().st_size > 5_000
