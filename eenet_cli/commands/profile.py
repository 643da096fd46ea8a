"""``eenet profile``: the cost of each exit of a staged model, or the latency a policy
realises when run for real (``--policy``). torch is imported inside the command."""

from __future__ import annotations

from typing import Annotated

import typer

from eenet_cli.app import app
from eenet_cli.commands.options import (
    DataOpt,
    JsonOpt,
    ModelArg,
    ModelOptions,
    OutputOpt,
    QuietOpt,
    model_options,
)
from eenet_cli.render import plan_streams, progress_bar, summary, warn

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

MODEL may be a bundle from `eenet export`: then --data alone runs the bundled policy,
with the bundled costs as the offline estimate. --batch-size takes a list (1,8,64) with a
policy: each batch size is run in turn, and a table compares, per batch size, the realised
per-sample latency with the full model's and with the offline estimate sum_k f_k c_k,
with the speed-up over the full model and the ideal one, c_K / expected cost. The full
model and every exit's prefix are timed interleaved with the early-exit calls, each pass
over the data is a block, and the figures are medians over the blocks; when the blocks
disagree too much the table says the machine was too noisy to tell. --backend onnx times
a bundle exported with --onnx on onnxruntime's CPU provider instead of its torch.export
graphs, under the same protocol (FLOPs and parameters are still counted on the torch
graphs).

Examples (on the shipped sample model):

\b
  eenet profile digits-cnn --weights sample_data/digits_model.safetensors --repeats 50 -o costs.json
  eenet profile resnet56 --input-shape 3,32,32 --unit MFLOPs --repeats 5 -o resnet56_flops.json
  eenet fit sample_data/digits.parquet --budget 60% -o policy.json
  eenet profile digits-cnn --weights sample_data/digits_model.safetensors --threads 1 --policy policy.json --data digits:test --repeats 2
  eenet export digits-cnn --weights sample_data/digits_model.safetensors --policy policy.json --onnx -o digits.eenet
  eenet profile digits.eenet --data digits:test --batch-size 1,16 --threads 1 --repeats 3 --warmup 2
  eenet profile digits.eenet --backend onnx --data digits:test --batch-size 1,16 --threads 1 --repeats 3 --warmup 2

Your own model (an import string runs its module's code):

\b
  eenet profile my_pkg.models:build --weights ckpt.pt --input-shape 3,32,32 --threads 1 -o costs.json
  eenet profile path/to/hf_model --weights heads.safetensors --input-shape 32 --threads 1 -o costs.json

For a text model (a Hugging Face model folder, see --exits) --input-shape is the number
of tokens per sample; the input is random token ids without padding.
"""


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
@model_options
def profile_command(
    model: ModelArg,
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="One sample's shape without the batch axis, e.g. 3,32,32 (built-in models have a default).")] = None,
    batch_size: Annotated[
        str,
        typer.Option(
            "--batch-size",
            help="Samples per timed call; costs are per call. With --policy: the runtime's batch size (default 1); the data's "
            "batches, a DataLoader's own included, are split or joined to it. With a policy, a list like 1,8,64 runs each "
            "and compares them.",
        ),
    ] = "1",
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads (default: torch's choice).")] = None,
    repeats: Annotated[
        int | None,
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
    policy: Annotated[str | None, typer.Option("--policy", help="Policy JSON: run it for real over --data and report latency and accuracy.")] = None,
    data: DataOpt = None,
    costs: Annotated[str | None, typer.Option("--costs", help="With --policy: costs JSON or inline 1.2,2.5,3.7ms for the offline estimate (default: the policy's costs).")] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="For a bundle MODEL: run its torch.export graphs (torch, the default) or its ONNX graphs on onnxruntime's CPU "
            "provider (onnx; the bundle must come from export --onnx).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    opts: ModelOptions = ModelOptions(),
) -> None:
    from eenet_cli.artifacts.costs import normalise_unit
    from eenet_cli.errors import InputError

    unit = normalise_unit(unit, "--unit")
    if threads is not None and threads < 1:
        raise InputError(f"must be at least 1, got {threads}", field="--threads")
    if repeats is not None and repeats < 1:
        raise InputError(f"must be at least 1, got {repeats}", field="--repeats")
    if warmup < 0:
        raise InputError(f"must be 0 or more, got {warmup}", field="--warmup")
    batch_sizes = parse_batch_sizes(batch_size)
    if backend is not None:
        if backend not in ("torch", "onnx"):
            raise InputError(f"expected torch or onnx, got {backend!r}", field="--backend")
        if not _is_bundle(model):
            raise InputError(f"applies to an eenet bundle (from eenet export) only; {model} is not one", field="--backend")
    bundled_policy = policy is None and data is not None and _is_bundle(model)
    if len(batch_sizes) > 1 and policy is None and not bundled_policy:
        raise InputError("several batch sizes need a policy run (--policy and --data, or a bundle and --data)", field="--batch-size")
    batch_size = batch_sizes[0]
    streams = plan_streams(
        output,
        what="costs" if policy is None and not bundled_policy else "policy run",
        json_out=json_out,
        json_is_artifact=True,
        quiet=quiet,
        inputs=[("model", model), ("weights", opts.weights), ("policy", policy), ("data", data), ("costs file", costs)],
    )
    if policy is not None or bundled_policy:
        if data is None:
            raise InputError("--policy needs --data to run the policy on", field="--data")
        _profile_policy(
            model, opts, policy, data, costs, batch_sizes, threads, warmup, streams, quiet,
            repeats=POLICY_REPEATS if repeats is None else repeats, backend=backend,
        )
        return
    if repeats is None:
        repeats = PROFILE_REPEATS
    if data is not None:
        raise InputError("--data is used only with --policy (profiling times random inputs of --input-shape)", field="--data")
    for name in opts.text_given:
        raise InputError("applies to text data, used only with --policy --data (profiling times random inputs of --input-shape)", field=name)

    import torch

    from eenet_cli.artifacts.files import dumps
    from eenet_cli.runtime.load import parse_shape
    from eenet_cli.runtime.profile import costs_document, profile_model

    if threads is not None:
        torch.set_num_threads(threads)  # before loading: onnxruntime sessions take torch's thread count
    loaded = _load(opts, model, backend)
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
    if backend == "onnx":  # FlopCounterMode sees no torch operators in onnxruntime: count on the bundle's torch graphs
        res.flops, res.params = _torch_counts(model, opts, shape)
    doc = costs_document(res, unit=unit, model=model)
    if backend is not None:
        doc["backend"] = _backend_name(backend)
    for k in res.noisy_exits():
        med, p10, p90 = res.stat("median")[k], res.stat("p10")[k], res.stat("p90")[k]
        warn(
            f"exit {k + 1} timing is noisy: p10 {p10:.4g} ms, median {med:.4g} ms, p90 {p90:.4g} ms "
            f"((p90-p10)/median = {(p90 - p10) / med:.2f} > 0.2); {noise_advice(threads)}"
        )
    streams.write_text_artifact(dumps(doc))
    title = f"{model}: cumulative cost per exit (batch {res.batch_size}, {res.threads} thread(s), {res.device})"
    console = streams.view_console()
    if console is not None:
        console.print(_profile_table(doc, title))
    summary(
        f"profiled {model}: {len(doc['costs'])} exits, costs {', '.join(f'{v:g}' for v in doc['costs'])} {doc['unit']} "
        f"(batch {res.batch_size}, {res.threads} thread(s), {res.device}){_where(streams)}",
        quiet,
    )


MAX_BATCH_SIZES = 16


def parse_batch_sizes(text: str) -> list[int]:
    """``1`` or ``1,8,64``: positive integers, each once."""
    from eenet_cli.errors import InputError

    parts = [p.strip() for p in str(text).split(",")]
    if len(str(text)) > 200 or len(parts) > MAX_BATCH_SIZES:
        raise InputError(f"expected at most {MAX_BATCH_SIZES} batch sizes like 1,8,64, got {text[:40]!r}", field="--batch-size")
    out: list[int] = []
    for p in parts:
        try:
            v = int(p)
        except ValueError:
            raise InputError(f"expected a positive integer or a list like 1,8,64, got {text!r}", field="--batch-size") from None
        if v < 1:
            raise InputError(f"must be at least 1, got {v}", field="--batch-size")
        if v in out:
            raise InputError(f"batch size {v} is given twice", field="--batch-size")
        out.append(v)
    return out


def _load(opts, model: str, backend: str | None):
    """``opts.load(model)``, with a bundle's --backend."""
    if backend is None:
        return opts.load(model)
    from eenet_cli.runtime.load import load_model, parse_model_args

    args = parse_model_args(opts.model_arg)
    if opts.exits is not None:
        args["exits"] = opts.exits
    return load_model(model, args, opts.weights, opts.device, backend=backend)


def _torch_counts(model: str, opts, shape) -> tuple[list[int], list[int]]:
    """FLOPs and parameters per exit of a bundle, counted on its torch.export graphs."""
    import torch

    from eenet_cli.runtime.profile import count_flops, count_params

    ref = _load(opts, model, "torch")
    x1 = ref.module.eenet_make_inputs(1, tuple(shape), torch.Generator().manual_seed(0)).to(ref.device)
    return count_flops(ref.stages, ref.heads, x1), count_params(ref.stages, ref.heads)


def _backend_name(backend: str) -> str:
    if backend != "onnx":
        return "torch"
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"


def _is_bundle(model: str) -> bool:
    from eenet_cli.runtime.bundle import is_bundle

    return is_bundle(model)


def noise_advice(threads: int | None) -> str:
    """What to try against noisy timings, leaving out what was already done."""
    advice = ["more --repeats", "a quieter machine"] if threads == 1 else ["--threads 1", "more --repeats", "a quieter machine"]
    return f"consider {', '.join(advice[:-1])} or {advice[-1]}"


def _where(streams) -> str:
    if streams.artifact is None and not streams.json:
        return ""
    return "; written to stdout" if streams.artifact in (None, "-") else f"; written to {streams.artifact}"


def _profile_policy(
    model, opts, policy_path, data_spec, costs_spec, batch_sizes, threads, warmup, streams, quiet, *, repeats: int = POLICY_REPEATS, backend: str | None = None
) -> None:
    import torch

    from eenet_cli.artifacts.costs import load_costs, parse_costs_json
    from eenet_cli.artifacts.files import CREATED_BY, dumps
    from eenet_cli.artifacts.policy import read_policy
    from eenet_cli.errors import InputError
    from eenet_cli.runtime.data import load_data, rebatch
    from eenet_cli.runtime.profile import compare_blocks, run_policy

    if isinstance(batch_sizes, int):
        batch_sizes = [batch_sizes]
    if threads is not None:
        torch.set_num_threads(threads)
    pol = read_policy(policy_path) if policy_path is not None else None
    cost = load_costs(costs_spec) if costs_spec else None
    loaded = _load(opts, model, backend)
    bundled = getattr(loaded.module, "eenet_bundle", False)
    if pol is None:  # a bundle and --data: its own policy, and its own costs unless --costs
        pol = loaded.module.policy
        policy_path = f"{model} (bundled policy)"
        if cost is None and loaded.module.costs is not None:
            cost = parse_costs_json(loaded.module.costs, f"{model} (bundled costs)")
    elif bundled and cost is None and loaded.module.costs is not None:
        cost = parse_costs_json(loaded.module.costs, f"{model} (bundled costs)")
    if cost is None and isinstance(pol.get("costs"), dict):
        cost = parse_costs_json(pol["costs"], f"{policy_path} (costs)")
    from eenet_cli.runtime import check_policy

    if not loaded.staged:
        raise InputError("running a policy needs a staged model (stages and heads)", source=model)
    check_policy(pol, loaded.num_exits or 0, str(policy_path))
    if cost is not None and cost.num_exits != loaded.num_exits:
        raise InputError(f"has {cost.num_exits} costs but the model has {loaded.num_exits} exits", source=cost.source)
    given_ms = _costs_ms(cost)
    given_batch = int(cost.extra.get("batch_size", 1)) if cost is not None and isinstance(cost.extra.get("batch_size"), int) else 1
    docs = []
    for batch_size in batch_sizes:
        # --batch-size is the runtime's batch: the data's batches (a DataLoader's own included) are split or joined to it
        src = rebatch(load_data(data_spec, batch_size, text=opts.text(loaded)), batch_size)
        total = src.num_samples * repeats if src.num_samples is not None else None
        with progress_bar(f"running policy at batch size {batch_size} ({repeats} passes)", total, quiet) as update:
            run = run_policy(loaded, pol, src, repeats=repeats, warmup=warmup, progress=lambda n: update(n))
        doc = policy_run_document(run, pol, cost, policy=str(policy_path), model=model, data=data_spec, device=loaded.device, threads=torch.get_num_threads())
        doc["comparison"] = compare_blocks(run, given_ms, given_batch)
        if backend is not None:
            doc["backend"] = _backend_name(backend)
        doc["created_by"] = CREATED_BY
        docs.append(doc)
        if len(batch_sizes) > 1:
            summary(f"batch size {batch_size}: {_comparison_line(doc['comparison'])}", quiet)
    if len(docs) == 1:
        out = docs[0]
    else:
        out = {
            "policy": str(policy_path),
            "model": model,
            "data": data_spec,
            "batch_sizes": list(batch_sizes),
            "threads": torch.get_num_threads(),
            "device": loaded.device,
            **({"backend": _backend_name(backend)} if backend is not None else {}),
            "repeats": repeats,
            "warmup": warmup,
            "comparison": [d["comparison"] for d in docs],
            "runs": docs,
            "created_by": CREATED_BY,
        }
    streams.write_text_artifact(dumps(out))
    console = streams.view_console()
    if console is not None:
        if len(docs) == 1:
            run_doc = docs[0]
            console.print(_policy_table(run_doc, f"policy {policy_path} on {data_spec} (batch {run_doc['batch_size']}, {run_doc['threads']} thread(s), {repeats} passes)"))
        console.print(_comparison_table([d["comparison"] for d in docs], f"early exit vs the full model ({docs[0]['threads']} thread(s), {repeats} blocks)", console))
    met = docs[0].get("budget_met")
    verdict = "" if met is None or len(docs) > 1 else ("; budget met" if met else "; budget MISSED")
    sizes = ",".join(str(b) for b in batch_sizes)
    summary(
        f"ran {policy_path} on {data_spec}: batch size {sizes}, {repeats} passes{verdict}{_where(streams)}",
        quiet,
    )


def _costs_ms(cost) -> list[float] | None:
    """The given costs in ms, if they are times."""
    if cost is None:
        return None
    from eenet_cli.artifacts.costs import unit_scale

    dim, factor = unit_scale(cost.unit)
    return [float(v) * factor * 1e3 for v in cost.values] if dim == "time" else None


def _comparison_line(c: dict) -> str:
    off = c.get("realised_over_offline_estimate")
    return (
        f"realised {c['realised_ms_per_sample']:.4g} ms/sample, full model {c['full_model_ms_per_sample']:.4g}, "
        f"in-run estimate {c['estimate_ms_per_sample']:.4g} (x{c['realised_over_estimate']:.3f})"
        + ("" if off is None else f", offline estimate {c['offline_estimate_ms_per_sample']:.4g} (x{off:.3f})")
        + f", speed-up {c['speedup']:.2f} of ideal {c['ideal_speedup']:.2f}; {c['verdict']}"
    )


def _comparison_table(rows: list[dict], title: str, console):
    from eenet_cli.render import fit_table_columns

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    cols = [
        ("batch", "right", 0, [str(r["batch_size"]) for r in rows]),
        ("realised ms/sample", "right", 0, [f(r["realised_ms_per_sample"], ".4g") for r in rows]),
        ("full model", "right", 0, [f(r["full_model_ms_per_sample"], ".4g") for r in rows]),
        ("offline est.", "right", 2, [f(r.get("offline_estimate_ms_per_sample"), ".4g") for r in rows]),
        ("realised/offline", "right", 2, [f(r.get("realised_over_offline_estimate"), ".3f") for r in rows]),
        ("in-run est.", "right", 1, [f(r["estimate_ms_per_sample"], ".4g") for r in rows]),
        ("realised/in-run", "right", 1, [f(r["realised_over_estimate"], ".3f") for r in rows]),
        ("speed-up", "right", 0, [f(r["speedup"], ".2f") for r in rows]),
        ("ideal", "right", 0, [f(r["ideal_speedup"], ".2f") for r in rows]),
        ("of ideal", "right", 1, [f(r["speedup_over_ideal"], ".0%") for r in rows]),
        ("steady", "right", 0, ["no" if r["noisy"] else "yes" for r in rows]),
    ]
    table, keep = fit_table_columns(console, cols)
    table.title = title
    for i in range(len(rows)):
        table.add_row(*[cols[j][3][i] for j in keep])
    return table


def _r(v: float | None) -> float | None:
    return None if v is None else float(f"{v:.6g}")


def policy_run_document(run, pol: dict, cost, *, policy: str, model: str, data: str, device: str, threads: int) -> dict:
    """The JSON of ``profile --policy`` (docs/runtime.md describes every field)."""
    from eenet_cli.artifacts.costs import unit_scale

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
