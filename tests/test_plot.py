"""``eenet plot`` and :mod:`eenet_cli.plotting`: real figures from real files.

Inputs are made the way a user makes them: synthetic predictions written to Parquet, then
``eenet evaluate`` and ``eenet fit`` through the CLI. Figures are checked by file type
(magic bytes), size, pixel variance, and by inspecting the matplotlib objects the plotting
functions return.
"""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, invoke, write_synthetic
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from eenet_cli import plotting  # noqa: E402
from eenet_cli.artifacts.predictions import read_predictions  # noqa: E402
from eenet_cli.artifacts.results import read_results  # noqa: E402

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
    assert "(scores, " in r.stderr and "split test" in r.stderr
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
    assert any(t.get_text() == "80.0%\n2.10 ms\nover budget" for t in fig.axes[0].texts)


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
    (["{results}", "{results}", "-o", "{out}/x.png"], ["two results files"]),
    (["{results}", "{preds}", "-o", "{out}/x.png"], ["plotted on its own"]),
    (["{policy}", "{three}", "-o", "{out}/x.png"], ["policy is for 4 exits but the predictions have 3"]),
    (["{policy}", "{five}", "-o", "{out}/x.png"], ["policy is for 10 classes but the predictions have 5"]),
    (["{results}", "--kind", "pie", "-o", "{out}/x.png"], ["unknown kind 'pie'"]),
    (["{results}", "--split", "train", "-o", "{out}/x.png"], ["expected val, test or all"]),
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
    from eenet_cli.commands.plot import PLOT_HELP

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


# --------------------------------------------------------------------------- readable labels, titles and output


def _renderer(fig):
    """Lay ``fig`` out as it is saved and return the renderer that measured it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)
    with plotting.style_context():
        canvas.draw()
    return canvas.get_renderer()


def _touching(boxes) -> list[tuple[int, int]]:
    """Pairs of display boxes that intersect."""
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]


def _all_texts(fig) -> list:
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_text()]


@pytest.fixture
def capture_figures(monkeypatch):
    """Figures the CLI saves, in order (the real save still happens)."""
    saved = []
    real = plotting.save_figure

    def spy(fig, target, fmt, dpi=plotting.DEFAULT_DPI):
        saved.append(fig)
        real(fig, target, fmt, dpi)

    monkeypatch.setattr(plotting, "save_figure", spy)
    return saved


def test_separation_class_labels_do_not_overlap_and_y_labels_name_the_scores(rng):
    n = 900
    labels = rng.integers(0, 10, n)
    max_prob = rng.random(n)
    correct = rng.random(n) < 0.7
    names = ["airplane-long", "automobile", "bird-of-prey", "catamaran", "deer-hunter", "doghouse", "frog-pond", "horse-race",
             "ship-wreck", "truck-stop"]
    fig = plotting.separation_figure(max_prob, 2 * max_prob, labels, correct, list(range(8)), class_acc=rng.random(10),
                                     scorer_type="entropy", class_names=names, threshold=0.5)
    renderer = _renderer(fig)
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticklabels() if t.get_text()]
        assert len(ticks) == 8
        boxes = [t.get_window_extent(renderer) for t in ticks]
        assert _touching(boxes) == [], [t.get_text() for t in ticks]
    left, right = fig.axes
    assert left.get_ylabel() == "max-prob score at exit 1"
    assert right.get_ylabel() == "entropy score at exit 1"
    # short labels stay horizontal, with the accuracy under the class
    fig = plotting.separation_figure(max_prob, max_prob, labels, correct, [3, 1, 7], class_acc=np.full(10, 0.5), scorer_type="maxprob")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["3\n50%", "1\n50%", "7\n50%"]
    assert all(t.get_rotation() == 0 for t in fig.axes[0].get_xticklabels())


@pytest.mark.parametrize("scorer_type, expected", [
    ("maxprob", "max-prob score"), ("entropy", "entropy score"), ("vote", "vote score"),
    ("patience", "patience score (run length)"), ("eenet", "eenet score (pre-sigmoid utility)"),
])
def test_score_labels_name_the_scorer_without_equation_numbers(files, scorer_type, expected):
    policy = json.loads(files["policy"].read_text())
    scores, labels, correct, exits = _scores_inputs(files["preds"], policy)
    fig = plotting.scores_figure(scores, labels, correct, exits, policy["thresholds"], scorer_type=scorer_type)
    assert fig.axes[0].get_ylabel() == expected
    sep = plotting.separation_figure(scores[:, 0], scores[:, 0], labels, correct[:, 0], [0, 1], scorer_type=scorer_type)
    assert sep.axes[1].get_ylabel().startswith(f"{expected.split(' (')[0]} at exit 1")
    for f in (fig, sep):
        assert not [t.get_text() for t in _all_texts(f) if "eq." in t.get_text()]


def test_tiny_score_range_has_plain_tick_labels_and_no_offset_text(rng):
    n, k = 400, 3
    scores = 1.9218 + 1e-5 * rng.random((n, k))
    labels = rng.integers(0, 5, n)
    correct = rng.random((n, k)) < 0.6
    exits = np.full(n, k - 1)
    figs = [
        plotting.scores_figure(scores, labels, correct, exits, [None, None, None], scorer_type="eenet"),
        plotting.separation_figure(scores[:, 0], scores[:, 0], labels, correct[:, 0], [0, 1, 2], scorer_type="eenet"),
    ]
    for fig in figs:
        _renderer(fig)
        labelled = 0
        for ax in [a for a in fig.axes if a.get_visible()]:
            assert ax.yaxis.get_offset_text().get_text() == ""
            ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text() and t.get_visible()]
            assert all(t.replace("\N{MINUS SIGN}", "-").replace(".", "").lstrip("-").isdigit() for t in ticks), ticks
            assert len(set(ticks)) == len(ticks)  # enough decimals to tell the ticks apart
            labelled += bool(ticks)
        assert labelled >= 1


def _over_budget_records(methods: list[str]) -> list[dict]:
    return [{"method": m, "budget": 1.0, "accuracy": 0.80 + 0.01 * i, "avg_cost": 0.6543 + 0.0101 * i, "budget_met": False,
             "exit_fractions": [0.4, 0.3, 0.2, 0.1]} for i, m in enumerate(methods)]


@pytest.mark.parametrize("count", [3, 7, 10])
def test_exits_over_budget_notes_do_not_overlap(count):
    methods = ["eenet", "eenet-search", "eenet-maxprob", "eenet-geometric", "maxprob", "entropy", "vote", "patience",
               "lookahead", "oracle"][:count]
    fig = plotting.exits_figure(_over_budget_records(methods), 1.0, unit="ms")
    renderer = _renderer(fig)
    ax = fig.axes[0]
    notes = [t for t in ax.texts if "over" in t.get_text()]
    assert len(notes) == count
    boxes = [t.get_window_extent(renderer) for t in notes]
    assert _touching(boxes) == []
    figure_box = fig.bbox
    assert all(b.x0 >= figure_box.x0 and b.x1 <= figure_box.x1 and b.y1 <= figure_box.y1 for b in boxes)  # all on the page
    top_of_bars = ax.transData.transform((0, 100.0))[1]
    assert all(b.y0 >= top_of_bars for b in boxes)  # above the bars, not over them


def _is_red(colour) -> bool:
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(colour)
    return r >= 0.7 and g <= 0.15 and b <= 0.15


def test_overrun_marks_and_notes_are_red():
    rec = [{"method": "maxprob", "budget": 2.0, "accuracy": 0.8, "avg_cost": 2.2, "budget_met": False, "exit_fractions": [0.5, 0.5]},
           {"method": "maxprob", "budget": 3.0, "accuracy": 0.9, "avg_cost": 2.9, "budget_met": True, "exit_fractions": [0.2, 0.8]}]
    ax = plotting.tradeoff_figure(rec, unit="ms").axes[0]
    marks = [c for c in ax.collections if c.get_label().startswith("budget overrun")]
    assert len(marks) == 1 and len(marks[0].get_offsets()) == 1
    assert all(_is_red(c) for c in marks[0].get_edgecolor())
    legend_mark = [h for h, t in zip(ax.get_legend().legend_handles, ax.get_legend().get_texts()) if t.get_text().startswith("budget overrun")]
    assert legend_mark and all(_is_red(c) for c in legend_mark[0].get_edgecolor())
    note = [t for t in plotting.exits_figure(rec, 2.0, unit="ms").axes[0].texts if "over budget" in t.get_text()]
    assert len(note) == 1 and _is_red(note[0].get_color())
    docs = (Path(__file__).resolve().parent.parent / "docs" / "plots.md").read_text()
    assert "hollow red X" in docs and "orange" not in docs


def test_exits_are_numbered_from_one(files):
    doc = read_results(files["results"])
    k = doc["num_exits"]
    tradeoff = plotting.tradeoff_figure(doc["results"], unit="ms", costs=doc["costs"]["costs"])
    _renderer(tradeoff)
    (top,) = tradeoff.axes[0].child_axes  # the exits' costs along the top
    assert [t.get_text() for t in top.get_xticklabels()] == [f"exit {j}" for j in range(1, k + 1)]
    exits = plotting.exits_figure(doc["results"], plotting.nearest_budget(doc["results"], None), unit="ms")
    legend = [t.get_text() for t in exits.axes[0].get_legend().get_texts()]
    assert sorted(legend) == [f"exit {j}" for j in range(1, k + 1)] and "exit 0" not in legend
    policy = json.loads(files["policy"].read_text())
    scores, labels, correct, exit_taken = _scores_inputs(files["preds"], policy)
    panels = plotting.scores_figure(scores, labels, correct, exit_taken, policy["thresholds"], scorer_type="maxprob").axes
    assert panels[0].get_title().startswith("exit 1:") and panels[k - 1].get_title().startswith(f"exit {k}:")
    sep = plotting.separation_figure(scores[:, 0], scores[:, 0], labels, correct[:, 0], [0, 1], scorer_type="maxprob")
    assert sep.axes[0].get_ylabel().endswith("at exit 1")


def test_default_titles_name_the_data_kind_and_split(runner, files, tmp_path, capture_figures):
    out = tmp_path / "x.png"
    runs = [
        ([files["results"]], ["preds", "accuracy vs. average cost", "test"]),  # the predictions the results came from
        ([files["results"], "--split", "val"], ["preds", "validation"]),
        ([files["results"], "--kind", "exits"], ["preds", "exits", "test"]),
        ([files["policy"], files["preds"]], ["preds", "exit scores", "maxprob policy", "split test"]),
        ([files["policy"], files["preds"], "--kind", "separation", "--split", "val"], ["preds", "right vs. wrong at exit 1", "split val"]),
    ]
    for args, needles in runs:
        r = invoke(runner, "plot", *args, "-o", out, "-q")
        assert r.exit_code == 0, r.output
        title = capture_figures[-1]._suptitle.get_text()
        for needle in needles:
            assert needle in title, (args, title)
    # a results CSV has no header: its own name stands for the data
    res = tmp_path / "my-results.csv"
    assert invoke(runner, "evaluate", files["preds"], "--methods", "maxprob", "--budgets", "2ms,3ms", "-o", res, "-q").exit_code == 0
    assert invoke(runner, "plot", res, "-o", out, "-q").exit_code == 0
    assert capture_figures[-1]._suptitle.get_text().startswith("my-results:")
    # --title replaces it, word for word
    assert invoke(runner, "plot", files["results"], "--title", "My own title", "-o", out, "-q").exit_code == 0
    assert capture_figures[-1]._suptitle.get_text() == "My own title"


@pytest.mark.parametrize("kind", ["tradeoff", "exits", "separation"])
def test_dollar_signs_in_titles_and_names_are_plain_text(runner, files, tmp_path, capture_figures, kind):
    odd = "$\\frac{$"
    doc = json.loads(files["results"].read_text())
    for rec in doc["results"]:
        if rec["method"] == "entropy":
            rec["method"] = odd
    results = tmp_path / "dollar.json"
    results.write_text(json.dumps(doc))
    inputs = [results] if kind != "separation" else [files["policy"], files["preds"]]
    out = tmp_path / "x.png"
    r = invoke(runner, "plot", *inputs, "--kind", kind, "--title", odd, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    _png_ok(out)
    fig = capture_figures[-1]
    assert fig._suptitle.get_text() == odd
    texts = _all_texts(fig)
    assert texts and not [t.get_text() for t in texts if t.get_parse_math() or t.get_usetex()]
    if kind != "separation":
        shown = [t.get_text() for t in texts]
        assert odd in shown  # the method name as written (legend entry or bar label)
    # and through the library, for every text artist the figure draws
    fig = plotting.tradeoff_figure([{"method": odd, "budget": 1.0, "accuracy": 0.5, "avg_cost": 1.0, "budget_met": True}], unit="$", title=odd)
    plotting.save_figure(fig, io.BytesIO(), "png")
    assert not [t.get_text() for t in _all_texts(fig) if t.get_parse_math()]


def test_summary_is_one_line_on_stderr_and_stdout_is_the_image(runner, files, tmp_path):
    out = tmp_path / "t.png"
    r = invoke(runner, "plot", files["results"], "-o", out)
    assert r.exit_code == 0, r.output
    assert r.stdout_bytes == b""
    assert r.stderr == f"wrote {out} (tradeoff, {len(METHODS)} methods, test)\n"
    r = invoke(runner, "plot", files["results"], "--kind", "exits", "-o", out)
    assert r.exit_code == 0 and r.stdout_bytes == b""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"wrote {out} (exits, {len(METHODS)} methods, test, budget "), r.stderr
    r = invoke(runner, "plot", files["policy"], files["preds"], "--kind", "separation", "--classes", "3", "-o", out)
    assert r.exit_code == 0 and r.stdout_bytes == b""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"wrote {out} (separation, maxprob policy"), r.stderr
    r = invoke(runner, "plot", files["results"], "-o", "-")
    assert r.exit_code == 0
    assert r.stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.stderr == f"wrote PNG to stdout (tradeoff, {len(METHODS)} methods, test)\n"
    r = invoke(runner, "plot", files["results"], "-o", "-", "-q")
    assert r.exit_code == 0 and r.stdout_bytes[:4] == b"\x89PNG" and r.stderr == ""
    r = invoke(runner, "plot", files["results"])  # no -o, stdout not a terminal: the image goes there
    assert r.exit_code == 0 and r.stdout_bytes[:4] == b"\x89PNG"
    assert r.stderr == f"wrote PNG to stdout (tradeoff, {len(METHODS)} methods, test)\n"
    r = invoke(runner, "plot", files["results"], "-o", out, "-q")
    assert r.exit_code == 0 and r.stdout_bytes == b"" and r.stderr == ""


@pytest.mark.skipif(not hasattr(__import__("os"), "openpty"), reason="needs a pseudo-terminal")
@pytest.mark.parametrize("output", [["-o", "-"], []])
def test_png_to_a_terminal_is_refused(files, tmp_path, output):
    """With stdout a terminal (a real pty), ``-o -`` or no ``-o`` exits 2 with one line and draws nothing."""
    import os
    import subprocess
    import sys
    import threading

    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "eenet_cli", "plot", str(files["results"]), *output],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    shown: list[bytes] = []

    def drain() -> None:  # read the terminal, so a wrong build writing PNG bytes cannot block
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    os.close(master)
    err = err.decode()
    assert proc.returncode == 2, err
    assert err.startswith("eenet: error:") and err.count("\n") == 1, err
    assert "binary" in err and "give -o FILE" in err
    assert b"".join(shown) == b""
