"""``eenet export``: a staged model and its policy as one deployment bundle. torch is
imported inside the command."""

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
    certificate_line,
    model_options,
)
from eenet_cli.render import plan_streams, summary, write_stdout_bytes

EXPORT_HELP = """Write a staged model and its policy as one deployment bundle.

The bundle (a zip file; .eenet by convention) holds each stage and each head as a
torch.export graph with a free batch axis, its weights as safetensors, the policy (with
its certificate, when it has one), the costs (--costs, or the policy's) and how they were
measured, the input spec (the shape and dtype of one sample, from --data, --input-shape or
the built-in model's default), and the sha256 of every member in manifest.json. No member
is a pickle: loading a bundle never unpickles anything, and a changed member fails its
sha256 check. Every exported part is rebuilt from its bytes and compared with the model at
batch sizes 1 and 3 before anything is written. See docs/spec.md §6 and docs/runtime.md.

With --onnx each stage and head is also written as an ONNX graph (torch.onnx.export with
dynamo=True, weights embedded), checked on onnxruntime against the model at batch sizes 1
and 3 (max |difference| 1e-4); it needs tensor hidden states and the onnx extra (pip
install 'eenet[onnx]'). Run those graphs with eenet_cli.runtime.load_bundle(path,
backend="onnx") or eenet profile model.eenet --backend onnx.

Load it in Python with eenet_cli.runtime.load_bundle(path) (torch and numpy only): called
on a batch it returns the predictions, the exits taken and the policy's scores, in the
order of the batch. eenet profile and eenet dump take a bundle as MODEL; with --data,
profile runs the bundled policy (--batch-size 1,8,64 compares the batch sizes).

Examples (on the shipped sample model):

\b
  eenet fit sample_data/digits.parquet --budget 60% -o policy.json
  eenet export digits-cnn --weights sample_data/digits_model.safetensors --policy policy.json --costs sample_data/digits_costs.json -o digits.eenet
  eenet dump digits.eenet --data digits:test --split test -o test_preds.parquet
  eenet profile digits.eenet --data digits:test --batch-size 1,8 --repeats 3 --warmup 2
  eenet export digits-cnn --weights sample_data/digits_model.safetensors --policy policy.json --onnx -o digits_onnx.eenet

Your own model (an import string runs its module's code):

\b
  eenet export my_pkg.models:build --weights ckpt.pt --input-shape 3,32,32 --policy policy.json -o model.eenet
"""


@app.command("export", help=EXPORT_HELP)
@model_options
def export_command(
    model: ModelArg,
    policy: Annotated[str, typer.Option("--policy", help="Policy JSON from `eenet fit` (its certificate travels with it).", show_default=False)],
    output: OutputOpt = None,
    costs: Annotated[
        str | None,
        typer.Option("--costs", help="Costs JSON from `eenet profile`, or inline 1.2,2.5,3.7ms, stored in the bundle (default: the policy's costs)."),
    ] = None,
    data: DataOpt = None,
    input_shape: Annotated[
        str | None, typer.Option("--input-shape", help="One sample's shape without the batch axis, e.g. 3,32,32, when there is no --data (built-in models have a default).")
    ] = None,
    onnx: Annotated[
        bool,
        typer.Option("--onnx", help="Also write every stage and head as an ONNX graph (tensor hidden states only; needs the onnx extra)."),
    ] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    opts: ModelOptions = ModelOptions(),
) -> None:
    from eenet_cli.errors import InputError

    if json_out and output in (None, "-"):
        raise InputError("--json prints a summary on stdout; write the bundle to a file with -o FILE", field="--output")
    streams = plan_streams(
        output,
        what="bundle",
        binary=True,
        json_out=json_out,
        terminal_view=False,
        quiet=quiet,
        inputs=[("model", model), ("weights", opts.weights), ("policy", policy), ("data", data), ("costs file", costs)],
    )
    if data is not None and input_shape is not None:
        raise InputError("give either --data (the example input comes from it) or --input-shape, not both", field="--input-shape")
    if onnx:
        from eenet_cli.runtime.onnx_parts import require_export

        require_export()  # one line before the model is loaded

    import hashlib

    from eenet_cli.artifacts.costs import load_costs, parse_costs_json
    from eenet_cli.artifacts.files import dumps
    from eenet_cli.artifacts.policy import read_policy
    from eenet_cli.runtime import check_policy
    from eenet_cli.runtime.bundle import build_members, write_bundle

    pol = read_policy(policy)
    cost = load_costs(costs) if costs else None
    costs_from = costs
    if cost is None and isinstance(pol.get("costs"), dict):
        cost = parse_costs_json(pol["costs"], f"{policy} (costs)")
        costs_from = f"{policy} (costs)"
    loaded = opts.load(model, "cpu")  # exported on the CPU; load_bundle moves it to a device
    if not loaded.staged:
        raise InputError("a bundle needs a staged model (stages and heads, K of each; docs/spec.md §5)", source=model)
    check_policy(pol, loaded.num_exits or 0, policy)
    if cost is not None and cost.num_exits != loaded.num_exits:
        raise InputError(f"has {cost.num_exits} costs but the model has {loaded.num_exits} exits", source=cost.source)
    x, input_from = _example(loaded, data, input_shape, opts)
    import torch

    from eenet_cli.runtime.run import run_checked

    with torch.inference_mode():
        outs = run_checked(loaded, x, data or f"--input-shape {input_shape or ''}".strip())
    c = int(outs[0].shape[1])
    if pol.get("num_classes", c) != c:
        raise InputError(f"is for {pol['num_classes']} classes, the model gives {c}", source=policy, field="num_classes")
    costs_doc = None
    if cost is not None:
        costs_doc = cost.to_json()
        costs_doc["source"] = str(costs_from)
    extra = {"input_from": input_from, "costs_source": str(costs_from) if cost is not None else None}
    config = getattr(loaded.module, "config", None)
    if getattr(config, "vocab_size", None):
        extra["vocab_size"] = int(config.vocab_size)
    if opts.weights:
        from pathlib import Path

        try:
            extra["weights_sha256"] = hashlib.sha256(Path(opts.weights).read_bytes()).hexdigest()
        except OSError:
            pass
    members = build_members(loaded.module, x, policy=pol, costs=costs_doc, model=model, extra=extra, onnx=onnx)
    size = sum(len(v) for v in members.values())
    if streams.artifact in (None, "-"):
        import io
        import zipfile

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in ["manifest.json", *sorted(n for n in members if n != "manifest.json")]:
                zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), members[name])
        write_stdout_bytes(buf.getvalue())
        where = "stdout"
    else:
        write_bundle(streams.artifact, members)
        where = streams.artifact
    doc = {
        "bundle": where,
        "model": model,
        "num_exits": loaded.num_exits,
        "num_classes": c,
        "method": pol.get("method"),
        "certified": "certificate" in pol,
        "costs": None if cost is None else cost.brief(),
        "input": input_from,
        "members": sorted(members),
        "bytes": size,
        "onnx": _onnx_brief(members),
    }
    if json_out:
        write_stdout_bytes(dumps(doc).encode("utf-8"))
    costs_line = "no costs" if cost is None else f"costs {', '.join(f'{v:g}' for v in cost.values)} {cost.unit} from {costs_from}"
    summary(
        f"exported {model} ({loaded.num_exits} exits, {c} classes) with {pol.get('method')} policy {policy} and {costs_line} "
        f"to {where} ({len(members)} members, {size / 1e6:.2f} MB; input {input_from}"
        + ("" if not onnx else f"; ONNX opset {doc['onnx']['opset']}, max |onnx - torch| {doc['onnx']['max_abs_diff']:.2g}")
        + ")",
        quiet,
    )
    if "certificate" in pol:
        summary(certificate_line(pol["certificate"]), quiet)


def _onnx_brief(members: dict[str, bytes]) -> dict | None:
    """The manifest's ``onnx`` entry (null without --onnx)."""
    from eenet_cli.artifacts.files import loads_strict

    return loads_strict(members["manifest.json"], "manifest.json").get("onnx")


def _example(loaded, data: str | None, input_shape: str | None, opts):
    """An example batch for torch.export, and where it came from."""
    import torch

    from eenet_cli.errors import InputError
    from eenet_cli.runtime.batch import batch_slice, describe_input

    if data is not None:
        from eenet_cli.runtime.data import load_data

        for x, _ in load_data(data, 4, text=opts.text(loaded)):
            pack = getattr(loaded.module, "eenet_pack_inputs", None)
            if not isinstance(x, torch.Tensor) and callable(pack):
                x = pack(x)
            x = batch_slice(x, slice(0, 4))
            return x, f"{describe_input(x).removeprefix('of shape ')} from {data}"
        raise InputError("holds no samples", source=data, field="--data")
    from eenet_cli.runtime.load import parse_shape

    if input_shape is not None:
        shape = parse_shape(input_shape, 4)
    elif loaded.input_shape is not None:
        shape = tuple(loaded.input_shape)
    elif getattr(loaded.module, "eenet_text", False):
        raise InputError("needed for this text model when there is no --data: the number of tokens per sample, e.g. 64", field="--input-shape")
    else:
        raise InputError("needed for this model when there is no --data (the shape of one sample without the batch axis, e.g. 3,32,32)", field="--input-shape")
    gen = torch.Generator().manual_seed(0)
    make = getattr(loaded.module, "eenet_make_inputs", None)
    x = make(4, tuple(shape), gen) if callable(make) else torch.randn((4, *shape), generator=gen)
    return x, f"random {','.join(map(str, shape))} (--input-shape)" if input_shape else f"random {','.join(map(str, shape))} (the model's default)"
