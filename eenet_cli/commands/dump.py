"""``eenet dump``: run a multi-exit model over data and write every exit's scores as
predictions (Parquet, to a file or stdout; a folder of part files under torchrun)."""

from __future__ import annotations

import contextlib
import os
from typing import Annotated, Optional

import typer

from eenet_cli.app import app
from eenet_cli.commands.options import CostsOpt, DataOpt, JsonOpt, ModelArg, ModelOptions, OutputOpt, QuietOpt, model_options
from eenet_cli.render import plan_streams, progress_bar, summary, write_stdout_bytes

DUMP_HELP = """Run a multi-exit model over data and write every exit's scores to a predictions Parquet file.

Works with staged models (stages and heads) and with models whose forward() returns a
list of K logits tensors. Batches are streamed into Parquet row groups, so memory stays
flat in the data size; the file appears only when complete. Rows get labels, the
--split name and sample ids (0, 1, ...; with --append they continue after the largest
existing id). --append writes a new file holding the old rows and then the new ones and
renames it over the old (never modifies in place); the new rows follow the old file's
float16/float32 choice and keep its costs unless --costs is given.

Two dumps writing one file take turns (a lock file .NAME.lock beside it, held by
--append from reading the old rows to the rename): no row is lost to a concurrent --append.

Under torchrun (WORLD_SIZE > 1) each rank runs every WORLD_SIZE-th batch and writes
OUTPUT/part-RRRRR.parquet; the folder is one predictions input for fit and evaluate. Rank 0
records the parts in OUTPUT/.eenet-dump.json; a later dump with fewer ranks removes only
part files an earlier eenet dump recorded there, and says so.

--scores probs stores softmax(outputs) instead of the raw outputs.

--keep top-k:K writes compact predictions (docs/spec.md §2.1.1) instead of every class
score: per exit the top K scores and their classes, the log-sum-exp, the entropy of the
full distribution, each exit's score of every exit's prediction, and the label's score,
computed batch by batch from the model's outputs (the same file `eenet compact --top-k K`
makes from a full dump). For large output spaces (language models over a vocabulary):
fit, apply, evaluate and certify read it as they read a full file.

Examples (on the shipped sample model):

\b
  eenet dump digits-cnn --weights sample_data/digits_model.safetensors --data digits:val --split val --costs sample_data/digits_costs.json -o preds.parquet
  eenet dump digits-cnn --weights sample_data/digits_model.safetensors --data digits:test --split test -o preds.parquet --append
  eenet dump digits-cnn --weights sample_data/digits_model.safetensors --data digits:val --split val --costs sample_data/digits_costs.json -q | eenet fit - --budget 60% -o policy.json
  eenet dump digits-cnn --weights sample_data/digits_model.safetensors --data digits:val --split val --keep top-k:3 -o compact.parquet

Your own model (an import string runs its module's code):

\b
  eenet dump my_pkg.models:build --weights ckpt.pt --data my_pkg.data:val_loader --split val --costs costs.json -o preds.parquet
  eenet dump path/to/hf_model --weights heads.safetensors --data val.csv --text-column text --label-column label --split val -o preds.parquet

Text: MODEL may be a Hugging Face model folder (a BERT-like encoder; exits after the
--exits layers, one linear head each on the mean-pooled tokens; --weights may hold the
heads only). Text data (a .csv/.tsv/.parquet file, or an import string whose batches are
(list of strings, labels)) is tokenised with --tokenizer FOLDER, by default the model
folder's own tokenizer, padded per batch and truncated at --max-length tokens.
"""


@app.command("dump", help=DUMP_HELP)
@model_options
def dump_command(
    model: ModelArg,
    data: DataOpt = None,
    split: Annotated[Optional[str], typer.Option("--split", "-s", help="Split name stored with every row (val, test, ...). Without it the file has no split column.")] = None,
    output: OutputOpt = None,
    append: Annotated[bool, typer.Option("--append", help="Add the rows to an existing file (writes a new file = old rows + new rows).")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Store scores as float16 (half the size).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size for .npz/.pt/built-in data (a loader keeps its own).")] = 256,
    costs: CostsOpt = None,
    scores: Annotated[str, typer.Option("--scores", help="logits (raw outputs) or probs (softmax of the outputs).")] = "logits",
    keep: Annotated[str, typer.Option("--keep", help="full (every class score) or top-k:K (compact predictions: the top K classes per exit, docs/spec.md §2.1.1).")] = "full",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    opts: ModelOptions = ModelOptions(),
) -> None:
    from eenet_cli.artifacts.costs import load_costs
    from eenet_cli.errors import InputError

    if data is None:
        raise InputError("missing --data (an import string, .npz, .pt, .csv/.parquet text or digits:val); see eenet dump --help", field="--data")
    from eenet_cli.runtime.dump import shard_from_env

    checked = output
    if output not in (None, "-") and shard_from_env().active and os.path.isdir(output):
        checked = os.path.join(output, f"part-{shard_from_env().rank:05d}.parquet")  # a sharded dump writes into the folder
    streams = plan_streams(
        checked,
        what="predictions",
        binary=True,
        json_out=json_out,
        terminal_view=False,
        quiet=quiet,
        inputs=[("model", model), ("weights", opts.weights), ("data", data), ("costs file", costs)],
    )
    to_stdout = streams.artifact == "-"
    if streams.artifact is None:
        raise InputError("--json prints a summary; give the predictions file with -o FILE", field="--output")
    if to_stdout and append:
        raise InputError("--append needs a file to append to; give -o FILE", field="--output")
    if batch_size < 1:
        raise InputError(f"must be at least 1, got {batch_size}", field="--batch-size")
    if scores not in ("logits", "probs"):
        raise InputError(f"expected logits or probs, got {scores!r}", field="--scores")
    if split is not None and not split.strip():
        raise InputError("must not be empty", field="--split")
    from eenet_cli.runtime.dump import parse_keep, shard_from_env

    top_k = parse_keep(keep)
    if top_k is not None and fp16:
        raise InputError("--fp16 halves full scores; a compact file (--keep top-k:K) stores a few float32 numbers per exit, drop --fp16", field="--fp16")

    shard = shard_from_env()
    if to_stdout and shard.active:
        raise InputError("a sharded dump writes a folder of part files; give -o FOLDER", field="--output")
    with contextlib.ExitStack() as stack:
        if to_stdout:
            import tempfile

            # spooled to a private folder (Parquet needs its footer last), removed on any exit
            spool = stack.enter_context(tempfile.TemporaryDirectory(prefix="eenet-dump-"))
            output = os.path.join(spool, "predictions.parquet")
        cost = load_costs(costs) if costs else None
        _check_split_column(output, shard, split, append, top_k)  # before any model or data is loaded
        device = opts.device
        if device == "cuda" and shard.active and os.environ.get("LOCAL_RANK"):
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        loaded = opts.load(model, device)
        if cost is not None and loaded.num_exits is not None and cost.num_exits != loaded.num_exits:
            raise InputError(f"has {cost.num_exits} costs but the model has {loaded.num_exits} exits", source=cost.source, field="--costs")

        from eenet_cli.runtime.data import load_data
        from eenet_cli.runtime.dump import dump_predictions

        src = load_data(data, batch_size, split_hint=split, text=opts.text(loaded))
        label = f"dump {split or ''}".strip() + (f" [rank {shard.rank}/{shard.world}]" if shard.active else "")
        total = src.num_samples
        if total is not None and shard.active:
            total = None
        with progress_bar(label, total, quiet) as update:
            res = dump_predictions(
                loaded,
                src,
                output,
                split=split,
                append=append,
                fp16=fp16,
                scores=scores,
                costs=cost.to_json() if cost is not None else None,
                shard=shard,
                top_k=top_k,
                progress=lambda n, rate: update(n, description=f"{label} {rate:,.0f} samples/s"),
                log=lambda m: summary(m, quiet),
            )
        if to_stdout:
            with open(res.path, "rb") as fh:
                data_bytes = fh.read()
            write_stdout_bytes(data_bytes)
    acc = ", ".join(f"{a:.3f}" for a in res.exit_accuracy)
    kept = f" (compact: top {top_k})" if top_k is not None else ""
    summary(
        f"wrote {'stdout' if to_stdout else res.path}: {res.rows} new rows ({res.total_rows} in all), {res.num_exits} exits x "
        f"{res.num_classes} classes{kept}, {res.samples_per_second:,.0f} samples/s; exit accuracies {acc}",
        quiet,
    )
    if json_out:
        from eenet_cli.artifacts.files import dumps

        typer.echo(
            dumps(
                {
                    "output": "-" if to_stdout else str(res.path),
                    "rows": res.rows,
                    "total_rows": res.total_rows,
                    "num_exits": res.num_exits,
                    "num_classes": res.num_classes,
                    "split": split,
                    "top_k": top_k,
                    "exit_accuracy": res.exit_accuracy,
                    "seconds": res.seconds,
                }
            ),
            nl=False,
        )


def _check_split_column(output: str, shard, split: Optional[str], append: bool, top_k: Optional[int] = None) -> None:
    """--append needs a readable predictions file that keeps its shape (a split column in
    both or neither, compact or full alike); checked before the model runs, so a wrong
    target fails at once."""
    if not append:
        return
    from pathlib import Path

    from eenet_cli.artifacts.predictions import read_existing
    from eenet_cli.errors import InputError
    from eenet_cli.runtime.dump import check_append_keep, output_file

    path = Path(output) / f"part-{shard.rank:05d}.parquet" if shard.active else Path(output)
    if not path.is_file():
        output_file(output, shard)  # the right error for a folder/file mix-up
        raise InputError("--append: no such file to append to (drop --append to create it)", source=str(path), field="--output")
    old = read_existing(path)
    check_append_keep(old, top_k, path)
    has_split = "split" in old.names
    if has_split and split is None:
        raise InputError("--append: the file has a split column; give --split for the new rows", source=str(path), field="--split")
    if not has_split and split is not None:
        raise InputError("--append: the file has no split column; drop --split or write a new file", source=str(path), field="--split")
