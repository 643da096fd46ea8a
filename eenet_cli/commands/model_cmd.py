"""``eenet profile`` and ``eenet dump``: the commands that run a model (and import torch).

torch and every torch-backed module are imported inside the command functions, so
``eenet --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Annotated, Optional

import typer

from eenet_cli.cli import app
from eenet_cli.commands.common import (
    CostsOpt,
    JsonOpt,
    OutputOpt,
    QuietOpt,
    log,
    plan_streams,
    progress_bar,
    stderr_console,
    stdout_console,
    stdout_is_terminal,
    summary,
    warn,
    write_stdout_bytes,
)

MODEL_HELP = (
    "A built-in model (digits-cnn, resnet56, mlp), an import string package.module:factory "
    "(called with the --model-arg pairs, returns a torch.nn.Module), a torch.export .pt2 file, "
    "or a Hugging Face model folder (a BERT-like text encoder with exit heads; see --exits and docs/text.md). "
    "An import string imports and runs that module's code, as `python -m` would: name only code you trust. "
    "Installed packages come before the working folder on the import path. Model and weight files are inspected "
    "before loading and never unpickled."
)
ModelArg = Annotated[str, typer.Argument(help=MODEL_HELP, show_default=False)]
WeightsOpt = Annotated[
    Optional[str],
    typer.Option("--weights", "-w", help="Weights: .safetensors, or a state dict read with torch.load(weights_only=True). Never an arbitrary pickle."),
]
ModelArgsOpt = Annotated[
    Optional[list[str]],
    typer.Option("--model-arg", "-a", help="key=value passed to the model factory (int, float, true/false or text); repeat for more."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")]
DataOpt = Annotated[
    Optional[str],
    typer.Option(
        "--data",
        "-d",
        help="Data: an import string package.module:name giving (x, y) batches (a DataLoader works; a function is called "
        "with no arguments; x may be a tensor, a dict/tuple of tensors, or a list of texts to tokenise), a .npz with "
        "arrays x and y, a .pt with tensors x and y, the built-in digits:train|val|test, or text in a .csv/.tsv/.parquet "
        "file (--text-column, --label-column).",
    ),
]
ExitsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--exits",
        help="Text models: the encoder layers to put exits after, 1-based, e.g. 3,6,9,12 (default: 4 evenly spaced, "
        "or what the --weights file records). Same as --model-arg exits=...",
    ),
]
TokenizerOpt = Annotated[
    Optional[str],
    typer.Option("--tokenizer", help="Text data: a local tokenizer folder (default: the model folder). Never downloaded."),
]
TextColumnOpt = Annotated[Optional[str], typer.Option("--text-column", help="Text data in .csv/.tsv/.parquet: the column of texts (default: text).")]
LabelColumnOpt = Annotated[
    Optional[str], typer.Option("--label-column", help="Text data in .csv/.tsv/.parquet: the column of integer class ids (default: label).")
]
MaxLengthOpt = Annotated[
    Optional[int], typer.Option("--max-length", help="Text data: truncate to this many tokens (default: the model's, 128).")
]

PROFILE_HELP = """Measure the cost of each exit of a staged model and write a costs JSON.

Exit k's cost is that of a sample that stops there: stages 0..k, heads 0..k and the
exit decision (softmax + max + threshold test) at each of those heads, timed as the
early-exit runtime runs it (eenet_cli.runtime.EarlyExitModel), under
torch.inference_mode(), after --warmup rounds, --repeats times. The prefixes are timed
interleaved (each round runs every prefix once, in a shuffled order) so machine drift
hits all exits alike. The costs are the medians; p10, p90 and mean are kept under
"stats". If the medians are not strictly increasing the command says so and exits 1
without writing (costs must increase); a warning is printed when an exit is noisy,
(p90 - p10) / median > 0.2.

FLOPs per prefix are counted with torch.utils.flop_counter.FlopCounterMode for one
sample: one multiply-add = 2 FLOPs, and only matmul/convolution-like operators count.
Parameters are cumulative per prefix. --unit flops|MFLOPs|GFLOPs writes the FLOP counts as
the costs instead of the latency.

With --policy and --data it instead runs the policy for real (Algorithm 2: each sample
stops computing at the exit the policy accepts), --repeats passes over the data (default
5), and reports the accuracy and the realised latency: each sample's median over the
passes, averaged over the samples (the plain mean, p10 and p90 too). In the same passes,
interleaved with the samples, it re-measures every exit's cost with the policy's own exit
decision, and puts the offline estimate sum_k fraction_k * c_k from those costs and from
the given costs (--costs, or the policy's) beside the realised latency, with the ratio
realised / estimate. See docs/runtime.md.

Examples (on the shipped sample model):

\b
  eenet profile digits-cnn --weights sample_data/digits_model.safetensors --repeats 50 -o costs.json
  eenet profile resnet56 --input-shape 3,32,32 --unit MFLOPs --repeats 5 -o resnet56_flops.json
  eenet fit sample_data/digits.parquet --budget 60% -o policy.json
  eenet profile digits-cnn --weights sample_data/digits_model.safetensors --threads 1 --policy policy.json --data digits:test --repeats 2

Your own model (an import string runs its module's code):

\b
  eenet profile my_pkg.models:build --weights ckpt.pt --input-shape 3,32,32 --threads 1 -o costs.json
  eenet profile path/to/hf_model --weights heads.safetensors --input-shape 32 --threads 1 -o costs.json

For a text model (a Hugging Face model folder, see --exits) --input-shape is the number
of tokens per sample; the input is random token ids without padding.
"""

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

Examples (on the shipped sample model):

\b
  eenet dump digits-cnn --weights sample_data/digits_model.safetensors --data digits:val --split val --costs sample_data/digits_costs.json -o preds.parquet
  eenet dump digits-cnn --weights sample_data/digits_model.safetensors --data digits:test --split test -o preds.parquet --append
  eenet dump digits-cnn --weights sample_data/digits_model.safetensors --data digits:val --split val --costs sample_data/digits_costs.json -q | eenet fit - --budget 60% -o policy.json

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


def _load(model: str, weights: Optional[str], model_args: Optional[list[str]], device: str, exits: Optional[str] = None):
    from eenet_cli.errors import InputError
    from eenet_cli.modelspec import load_model, parse_model_args

    args = parse_model_args(model_args)
    if exits is not None:
        if "exits" in args:
            raise InputError("give the exits once: --exits or --model-arg exits=...", field="--exits")
        args["exits"] = exits
    return load_model(model, args, weights, device)


def _text_options(loaded, tokenizer, text_column, label_column, max_length):
    from eenet_cli.text import TextOptions

    return TextOptions(tokenizer=tokenizer, text_column=text_column, label_column=label_column, max_length=max_length, model=loaded.module)


# --------------------------------------------------------------------------- profile


PROFILE_REPEATS = 200  # timed rounds of `profile` (each times every exit's prefix once)
POLICY_REPEATS = 5  # timed passes over the data of `profile --policy`


def _profile_table(doc: dict, title: str):
    from rich.table import Table

    stats = doc.get("stats") or doc.get("latency_ms")
    unit = doc["unit"] if "stats" in doc else "ms"
    t = Table(title=title, title_style="bold")
    for col in ("exit", f"median {unit}", "p10", "p90", "mean", "MFLOPs", "params"):
        t.add_column(col, justify="right", no_wrap=True)
    for k in range(len(doc["costs"])):
        t.add_row(
            str(k + 1),  # exits are numbered from 1 for people (docs/spec.md §4)
            f"{stats['median'][k]:.4g}",
            f"{stats['p10'][k]:.4g}",
            f"{stats['p90'][k]:.4g}",
            f"{stats['mean'][k]:.4g}",
            f"{doc['flops'][k] / 1e6:.4g}",
            f"{doc['params'][k]:,}",
        )
    return t


@app.command("profile", help=PROFILE_HELP)
def profile_command(
    model: ModelArg,
    input_shape: Annotated[Optional[str], typer.Option("--input-shape", help="One sample's shape without the batch axis, e.g. 3,32,32 (built-in models have a default).")] = None,
    weights: WeightsOpt = None,
    model_arg: ModelArgsOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per timed call; costs are per call. With --policy: the runtime's batch size (default 1); the data's batches, a DataLoader's own included, are split or joined to it.")] = 1,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads (default: torch's choice).")] = None,
    repeats: Annotated[
        Optional[int],
        typer.Option(
            "--repeats",
            help="Timed rounds, each runs every exit's prefix once (default 200). With --policy: timed passes over --data "
            "(default 5); each sample's latency is its median over the passes.",
            show_default=False,
        ),
    ] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed rounds first.")] = 20,
    unit: Annotated[str, typer.Option("--unit", help="Costs unit: ms, us, s (latency) or flops, MFLOPs, GFLOPs (FLOP counts).")] = "ms",
    output: OutputOpt = None,
    policy: Annotated[Optional[str], typer.Option("--policy", help="Policy JSON: run it for real over --data and report latency and accuracy.")] = None,
    data: DataOpt = None,
    costs: Annotated[Optional[str], typer.Option("--costs", help="With --policy: costs JSON or inline 1.2,2.5,3.7ms for the offline estimate (default: the policy's costs).")] = None,
    exits: ExitsOpt = None,
    tokenizer: TokenizerOpt = None,
    text_column: TextColumnOpt = None,
    label_column: LabelColumnOpt = None,
    max_length: MaxLengthOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from eenet_cli.errors import InputError
    from eenet_cli.io import normalise_unit

    unit = normalise_unit(unit, "--unit")
    if threads is not None and threads < 1:
        raise InputError(f"must be at least 1, got {threads}", field="--threads")
    if repeats is not None and repeats < 1:
        raise InputError(f"must be at least 1, got {repeats}", field="--repeats")
    if warmup < 0:
        raise InputError(f"must be 0 or more, got {warmup}", field="--warmup")
    if batch_size < 1:
        raise InputError(f"must be at least 1, got {batch_size}", field="--batch-size")
    streams = plan_streams(
        output,
        what="costs" if policy is None else "policy run",
        json_out=json_out,
        json_is_artifact=True,
        quiet=quiet,
        inputs=[("model", model), ("weights", weights), ("policy", policy), ("data", data), ("costs file", costs)],
    )
    if policy is not None:
        if data is None:
            raise InputError("--policy needs --data to run the policy on", field="--data")
        text = (tokenizer, text_column, label_column, max_length)
        _profile_policy(
            model, weights, model_arg, device, policy, data, costs, batch_size, threads, warmup, output, json_out, quiet, exits, text,
            repeats=POLICY_REPEATS if repeats is None else repeats,
        )
        return
    if repeats is None:
        repeats = PROFILE_REPEATS
    if data is not None:
        raise InputError("--data is used only with --policy (profiling times random inputs of --input-shape)", field="--data")
    for name, value in (("--tokenizer", tokenizer), ("--text-column", text_column), ("--label-column", label_column), ("--max-length", max_length)):
        if value is not None:
            raise InputError("applies to text data, used only with --policy --data (profiling times random inputs of --input-shape)", field=name)

    import torch

    from eenet_cli.io import dumps, write_text
    from eenet_cli.modelspec import parse_shape
    from eenet_cli.profiling import costs_document, profile_model

    if threads is not None:
        torch.set_num_threads(threads)
    loaded = _load(model, weights, model_arg, device, exits)
    if input_shape is not None:
        shape = parse_shape(input_shape, batch_size)
    elif loaded.input_shape is not None:
        shape = loaded.input_shape
    elif getattr(loaded.module, "eenet_text", False):
        raise InputError("needed for this text model: the number of tokens per sample, e.g. 64 (typical of your data)", field="--input-shape")
    else:
        raise InputError("needed for this model (the shape of one sample without the batch axis, e.g. 3,32,32)", field="--input-shape")
    from math import prod

    from eenet_cli.memory import check_memory

    check_memory(batch_size * prod(shape) * 4, f"--input-shape {','.join(map(str, shape))} at batch size {batch_size}", field="--batch-size")
    with progress_bar(f"profiling {model}", repeats, quiet) as update:
        res = profile_model(loaded, shape, batch_size=batch_size, repeats=repeats, warmup=warmup, threads=threads, progress=update)
    doc = costs_document(res, unit=unit, model=model)
    for k in res.noisy_exits():
        med, p10, p90 = res.stat("median")[k], res.stat("p10")[k], res.stat("p90")[k]
        warn(
            f"exit {k + 1} timing is noisy: p10 {p10:.4g} ms, median {med:.4g} ms, p90 {p90:.4g} ms "
            f"((p90-p10)/median = {(p90 - p10) / med:.2f} > 0.2); {noise_advice(threads)}"
        )
    write_artifact(streams, dumps(doc))
    title = f"{model}: cumulative cost per exit (batch {res.batch_size}, {res.threads} thread(s), {res.device})"
    console = streams.view_console()
    if console is not None:
        console.print(_profile_table(doc, title))
    summary(
        f"profiled {model}: {len(doc['costs'])} exits, costs {', '.join(f'{v:g}' for v in doc['costs'])} {doc['unit']} "
        f"(batch {res.batch_size}, {res.threads} thread(s), {res.device}){_where(streams)}",
        quiet,
    )


def noise_advice(threads: int | None) -> str:
    """What to try against noisy timings, leaving out what was already done."""
    advice = ["more --repeats", "a quieter machine"] if threads == 1 else ["--threads 1", "more --repeats", "a quieter machine"]
    return f"consider {', '.join(advice[:-1])} or {advice[-1]}"


def write_artifact(streams, text: str) -> None:
    """A JSON artifact to its file or to stdout, once complete."""
    from eenet_cli.io import write_text

    if streams.artifact == "-" or (streams.json and streams.artifact is None):
        write_stdout_bytes(text.encode("utf-8"))
    elif streams.artifact is not None:
        write_text(streams.artifact, text)
        if streams.json:
            write_stdout_bytes(text.encode("utf-8"))


def _where(streams) -> str:
    if streams.artifact is None and not streams.json:
        return ""
    return "; written to stdout" if streams.artifact in (None, "-") else f"; written to {streams.artifact}"


def _profile_policy(model, weights, model_arg, device, policy_path, data_spec, costs_spec, batch_size, threads, warmup, output, json_out, quiet, exits=None, text=(None, None, None, None), *, repeats: int = POLICY_REPEATS) -> None:
    import torch

    from eenet_cli.errors import InputError
    from eenet_cli.io import CREATED_BY, dumps, load_costs, parse_costs_json, read_policy, write_text
    from eenet_cli.modelspec import load_data, rebatch
    from eenet_cli.profiling import run_policy

    if threads is not None:
        torch.set_num_threads(threads)
    pol = read_policy(policy_path)
    cost = load_costs(costs_spec) if costs_spec else None
    if cost is None and isinstance(pol.get("costs"), dict):
        cost = parse_costs_json(pol["costs"], f"{policy_path} (costs)")
    loaded = _load(model, weights, model_arg, device, exits)
    from eenet_cli.runtime import check_policy

    if not loaded.staged:
        raise InputError("running a policy needs a staged model (stages and heads)", source=model)
    check_policy(pol, loaded.num_exits or 0, policy_path)
    if cost is not None and cost.num_exits != loaded.num_exits:
        raise InputError(f"has {cost.num_exits} costs but the model has {loaded.num_exits} exits", source=cost.source)
    # --batch-size is the runtime's batch: the data's batches (a DataLoader's own included) are split or joined to it
    src = rebatch(load_data(data_spec, batch_size, text=_text_options(loaded, *text)), batch_size)
    total = src.num_samples * repeats if src.num_samples is not None else None
    with progress_bar(f"running policy ({repeats} passes)", total, quiet) as update:
        run = run_policy(loaded, pol, src, repeats=repeats, warmup=warmup, progress=lambda n: update(n))
    doc = policy_run_document(run, pol, cost, policy=str(policy_path), model=model, data=data_spec, device=loaded.device, threads=torch.get_num_threads())
    doc["created_by"] = CREATED_BY
    to_stdout = output == "-" or json_out or (output is None and not stdout_is_terminal())
    if output is not None:
        write_text(output, dumps(doc))
    if to_stdout and output != "-":
        typer.echo(dumps(doc), nl=False)
    t = _policy_table(doc, f"policy {policy_path} on {data_spec} (batch {run.batch_size}, {doc['threads']} thread(s), {repeats} passes)")
    if to_stdout:
        if not quiet:
            stderr_console().print(t)
    elif stdout_is_terminal() or not quiet:  # as plain profile: -q -o FILE in a pipeline prints nothing
        stdout_console().print(t)


def _r(v: float | None) -> float | None:
    return None if v is None else float(f"{v:.6g}")


def policy_run_document(run, pol: dict, cost, *, policy: str, model: str, data: str, device: str, threads: int) -> dict:
    """The JSON of ``profile --policy`` (docs/runtime.md describes every field)."""
    from eenet_cli.io import unit_scale

    fr = run.exit_fractions
    realised = run.realised_ms_per_sample
    p10, p50, p90 = run.per_sample_percentiles()
    doc: dict = {
        "policy": policy,
        "model": model,
        "data": data,
        "n": run.n,
        "batch_size": run.batch_size,
        "threads": threads,
        "device": device,
        "repeats": run.repeats,
        "warmup": run.warmup,
        "accuracy": run.accuracy,
        "exit_fractions": fr,
        # kept from before: the plain mean over every timed call (now of every pass)
        "measured_ms_per_sample": run.raw_mean_ms_per_sample,
        # filled in below: realised latency <= the policy's budget (null: no budget, or not a time),
        # and realised latency / the offline estimate sum f_k c_k from the given costs (null: no time costs)
        "budget_met": None,
        "realised_over_estimate": None,
    }
    if run.batch_size == 1:
        doc["measured_median_ms_by_exit"] = run.by_exit_median()
    doc["realised"] = {
        "ms_per_sample": realised,
        "statistic": "mean over samples of each sample's median latency over the passes"
        if run.batch_size == 1
        else "sum over batches of each batch's median latency over the passes, divided by the samples",
        "raw_mean_ms_per_sample": run.raw_mean_ms_per_sample,
        "p10_ms": p10,
        "p50_ms": p50,
        "p90_ms": p90,
        "decisions_stable": run.decisions_stable,
    }
    if run.batch_size == 1:
        doc["realised"]["mean_of_medians_ms_by_exit"] = run.by_exit_mean_of_medians()
    doc["realised"]["per_call_median_ms"] = [_r(v) for v in run.call_median_ms]
    doc["realised"]["call_sizes"] = [int(v) for v in run.call_sizes]
    med = run.measured_costs
    est = run.estimate_ms_per_sample
    doc["costs_measured"] = {
        "unit": "ms",
        "costs": [_r(v) for v in med],
        "statistic": "median",
        "p10": [_r(v) for v in run.prefix_stat("p10")],
        "p90": [_r(v) for v in run.prefix_stat("p90")],
        "mean": [_r(v) for v in run.prefix_stat("mean")],
        "mean_of_medians": [_r(v) for v in run.prefix_mean_of_medians()],
        "timings": [int(t.size) for t in run.prefix_ms],
        "batch_size": run.prefix_batch_size,
        "decision": run.scorer,
        "increasing": all(b > a for a, b in zip(med, med[1:])),
    }
    same = run.estimate_same_statistic_ms_per_sample
    doc["estimate_measured"] = {
        "value": est,
        "unit": "ms",
        "ratio": realised / est if est > 0 else None,
        "value_same_statistic": same,
        "ratio_same_statistic": realised / same if same > 0 else None,
    }
    budget = pol.get("budget")
    if isinstance(budget, dict):
        doc["budget"] = budget
    if cost is not None:
        value = float(sum(f * c for f, c in zip(fr, cost.values)))
        doc["costs"] = cost.brief()
        off: dict = {"value": value, "unit": cost.unit}
        means = (cost.extra.get("stats") or {}).get("mean")
        if isinstance(means, list) and len(means) == len(fr):
            off["value_from_means"] = float(sum(f * m for f, m in zip(fr, means)))
        dim, factor = unit_scale(cost.unit)
        if dim == "time" and value > 0:
            off["value_ms"] = value * factor * 1e3
            off["ratio"] = realised / off["value_ms"]
        if isinstance(cost.extra.get("batch_size"), int):
            off["costs_batch_size"] = cost.extra["batch_size"]
        doc["offline_estimate"] = off
        doc["realised_over_estimate"] = off.get("ratio")
    value = budget.get("value") if isinstance(budget, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        from eenet_cli.core.thresholds import within_budget

        try:
            dim, factor = unit_scale(str(budget.get("unit", "ms")))
        except KeyError:
            dim, factor = "unknown", 0.0
        if dim == "time":  # a FLOP budget says nothing about latency
            budget_ms = float(value) * factor * 1e3
            doc["budget_met"] = within_budget(realised, budget_ms)
            doc["realised_over_budget"] = realised / budget_ms
    return doc


def _policy_table(doc: dict, title: str):
    from rich.table import Table

    def ms(values) -> str:
        return "/".join("-" if v is None else f"{v:.3g}" for v in values) + " ms"

    re_ = doc["realised"]
    t = Table(title=title, title_style="bold")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("samples", str(doc["n"]))
    t.add_row("accuracy", f"{100 * doc['accuracy']:.2f}%")
    t.add_row("exit fractions", "/".join(f"{f:.3f}" for f in doc["exit_fractions"]))
    t.add_row("realised latency (mean of per-sample medians)", f"{re_['ms_per_sample']:.4g} ms/sample")
    t.add_row("  raw mean, p10, p50, p90", f"{re_['raw_mean_ms_per_sample']:.4g}, {re_['p10_ms']:.4g}, {re_['p50_ms']:.4g}, {re_['p90_ms']:.4g} ms")
    if "mean_of_medians_ms_by_exit" in re_:
        t.add_row("  by exit taken", ms(re_["mean_of_medians_ms_by_exit"]))
    budget = doc.get("budget")
    if isinstance(budget, dict) and "value" in budget:
        shown = f"{budget['value']:.4g} {budget.get('unit', '')}"
        if doc.get("budget_met") is not None:
            verdict = "[green]met[/green]" if doc["budget_met"] else "[bold red]MISSED[/bold red]"
            shown = f"{verdict}: {shown} (realised = {doc['realised_over_budget']:.2f}x the budget)"
        t.add_row("policy's budget", shown)
    if doc.get("realised_over_estimate") is not None:
        t.add_row("realised / offline estimate (given costs)", f"{doc['realised_over_estimate']:.2f}x")
    cm, em = doc["costs_measured"], doc["estimate_measured"]
    t.add_row(f"costs measured in this run ({cm['decision']} decision)", ms(cm["costs"]) + ("" if cm["increasing"] else " (not increasing)"))
    ratio = f" (realised/estimate {em['ratio']:.3f})" if em["ratio"] is not None else ""
    t.add_row("estimate from them, sum f_k c_k", f"{em['value']:.4g} ms{ratio}")
    if em["ratio_same_statistic"] is not None:
        t.add_row("  same, c_k as mean of per-slot medians", f"{em['value_same_statistic']:.4g} ms (realised/estimate {em['ratio_same_statistic']:.3f})")
    if "offline_estimate" in doc:
        off, c = doc["offline_estimate"], doc["costs"]
        t.add_row("costs c_k (given)", "/".join(f"{v:.3g}" for v in c["costs"]) + f" {c['unit']}")
        ratio = f" (realised/estimate {off['ratio']:.3f})" if "ratio" in off else ""
        t.add_row("offline estimate sum f_k c_k", f"{off['value']:.4g} {off['unit']}{ratio}")
        if "value_from_means" in off:
            t.add_row("  same with mean costs", f"{off['value_from_means']:.4g} {off['unit']}")
    if not re_["decisions_stable"]:
        t.add_row("note", "the passes did not all take the same exits")
    return t


# --------------------------------------------------------------------------- dump


@app.command("dump", help=DUMP_HELP)
def dump_command(
    model: ModelArg,
    data: DataOpt = None,
    split: Annotated[Optional[str], typer.Option("--split", "-s", help="Split name stored with every row (val, test, ...). Without it the file has no split column.")] = None,
    output: OutputOpt = None,
    append: Annotated[bool, typer.Option("--append", help="Add the rows to an existing file (writes a new file = old rows + new rows).")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Store scores as float16 (half the size).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size for .npz/.pt/built-in data (a loader keeps its own).")] = 256,
    costs: CostsOpt = None,
    weights: WeightsOpt = None,
    model_arg: ModelArgsOpt = None,
    scores: Annotated[str, typer.Option("--scores", help="logits (raw outputs) or probs (softmax of the outputs).")] = "logits",
    device: DeviceOpt = "cpu",
    exits: ExitsOpt = None,
    tokenizer: TokenizerOpt = None,
    text_column: TextColumnOpt = None,
    label_column: LabelColumnOpt = None,
    max_length: MaxLengthOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from eenet_cli.errors import InputError
    from eenet_cli.io import load_costs

    if data is None:
        raise InputError("missing --data (an import string, .npz, .pt, .csv/.parquet text or digits:val); see eenet dump --help", field="--data")
    from eenet_cli.dumping import shard_from_env

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
        inputs=[("model", model), ("weights", weights), ("data", data), ("costs file", costs)],
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
    from eenet_cli.dumping import shard_from_env

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
        _check_split_column(output, shard, split, append)  # before any model or data is loaded
        if device == "cuda" and shard.active and os.environ.get("LOCAL_RANK"):
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        loaded = _load(model, weights, model_arg, device, exits)
        if cost is not None and loaded.num_exits is not None and cost.num_exits != loaded.num_exits:
            raise InputError(f"has {cost.num_exits} costs but the model has {loaded.num_exits} exits", source=cost.source, field="--costs")

        from eenet_cli.dumping import dump_predictions
        from eenet_cli.modelspec import load_data

        src = load_data(data, batch_size, split_hint=split, text=_text_options(loaded, tokenizer, text_column, label_column, max_length))
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
                progress=lambda n, rate: update(n, description=f"{label} {rate:,.0f} samples/s"),
                log=lambda m: log(m, quiet),
            )
        if to_stdout:
            with open(res.path, "rb") as fh:
                data_bytes = fh.read()
            write_stdout_bytes(data_bytes)
    acc = ", ".join(f"{a:.3f}" for a in res.exit_accuracy)
    summary(
        f"wrote {'stdout' if to_stdout else res.path}: {res.rows} new rows ({res.total_rows} in all), {res.num_exits} exits x "
        f"{res.num_classes} classes, {res.samples_per_second:,.0f} samples/s; exit accuracies {acc}",
        quiet,
    )
    if json_out:
        from eenet_cli.io import dumps

        typer.echo(
            dumps(
                {
                    "output": "-" if to_stdout else str(res.path),
                    "rows": res.rows,
                    "total_rows": res.total_rows,
                    "num_exits": res.num_exits,
                    "num_classes": res.num_classes,
                    "split": split,
                    "exit_accuracy": res.exit_accuracy,
                    "seconds": res.seconds,
                }
            ),
            nl=False,
        )


def _check_split_column(output: str, shard, split: Optional[str], append: bool) -> None:
    """--append needs a readable predictions file that keeps its shape (a split column in
    both or neither); checked before the model runs, so a wrong target fails at once."""
    if not append:
        return
    from pathlib import Path

    from eenet_cli.dumping import _existing, output_file
    from eenet_cli.errors import InputError

    path = Path(output) / f"part-{shard.rank:05d}.parquet" if shard.active else Path(output)
    if not path.is_file():
        output_file(output, shard)  # the right error for a folder/file mix-up
        raise InputError("--append: no such file to append to (drop --append to create it)", source=str(path), field="--output")
    has_split = "split" in _existing(path).names
    if has_split and split is None:
        raise InputError("--append: the file has a split column; give --split for the new rows", source=str(path), field="--split")
    if not has_split and split is not None:
        raise InputError("--append: the file has no split column; drop --split or write a new file", source=str(path), field="--split")
