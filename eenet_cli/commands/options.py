"""Options and inputs the commands share: output, quiet, JSON, costs and seed options,
the model and text options of ``profile`` and ``dump`` (declared once, see
:func:`model_options`), and the rule for which prediction rows a policy is reported on."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Annotated, Optional

import typer

OutputOpt = Annotated[
    Optional[str],
    typer.Option("-o", "--output", help="Output file; '-' for stdout (the default when stdout is not a terminal)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors and warnings.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
CostsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--costs",
        help="Costs JSON file, or inline cumulative costs like 1.2,2.5,3.7ms. Default: the predictions' metadata.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed, 0 to 2**32-1 (same inputs + seed = same output).")]

MAX_SEED = 2**32 - 1
PolicyArg = Annotated[str, typer.Argument(metavar="POLICY", help="Policy JSON from `eenet fit`.", show_default=False)]
PredictionsArg = Annotated[str, typer.Argument(help="Predictions Parquet file or folder ('-' for stdin).", show_default=False)]
RowsOpt = Annotated[
    Optional[str],
    typer.Option("--split", help="Rows of this split (val, test, ...) or all. Default: test when there is a split column."),
]
EENetInputsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--eenet-inputs",
        help="What EENet's scorer reads: compact (default: a few numbers per exit, any number of classes, compact files too) "
        "or full (the paper's class-probability vectors; full files only, grows with the classes).",
        show_default=False,
    ),
]

OutputsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--outputs",
        help="What each exit predicts with: own (the model's heads, default), combined (exits 2..K pool the "
        "log-probabilities of the exits so far, weights fitted on validation) or auto (combined where held-out "
        "folds show it is more accurate); full predictions only (docs/outputs.md).",
        show_default=False,
    ),
]


def check_outputs(outputs: str | None, field: str = "--outputs") -> str:
    """``own``, ``combined`` or ``auto`` (None: own), or one line naming them."""
    from eenet_cli.core.outputs import check_mode

    return "own" if outputs is None else check_mode(outputs, field)


def eenet_hyper(inputs: str | None, field: str = "--eenet-inputs"):
    """EENet's training settings for ``--eenet-inputs`` (None: the defaults)."""
    if inputs is None:
        return None
    from eenet_cli.core.eenet import INPUTS, EENetHyper
    from eenet_cli.errors import InputError

    if inputs not in INPUTS:
        raise InputError(f"expected one of {', '.join(INPUTS)}, got {inputs!r}", field=field)
    return EENetHyper(inputs=inputs)


ConfidenceOpt = Annotated[
    Optional[str],
    typer.Option("--confidence", help="Certify with this confidence, e.g. 0.9 or 90% (1 - delta); see docs/certify.md.", show_default=False),
]


def parse_share(text: str | None, flag: str) -> float | None:
    """``0.9``, ``90%`` -> 0.9; a share strictly between 0 and 1."""
    from eenet_cli.errors import InputError

    if text is None:
        return None
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise InputError(f"expected a share like 0.9 or 90%, got {text!r}", field=flag) from None
    if not 0.0 < value < 1.0:
        raise InputError(f"must be between 0 and 1 (or 0% and 100%), exclusive; got {text!r}", field=flag)
    return value


def certificate_line(cert: dict) -> str:
    """One line saying what a policy's certificate promises."""
    parts = []
    for g in cert.get("guarantees", []):
        unit = g.get("unit", "")
        if unit == "share":
            parts.append(f"{g['what']} <= {100 * g['at_most']:.3g}% (bound {100 * g['upper_bound']:.3g}%)")
        else:
            parts.append(f"{g['what']} <= {g['at_most']:.4g}{unit} (bound {g['upper_bound']:.4g}{unit})")
    rows = cert.get("calibration", {}).get("rows")
    return f"certified with {100 * cert['confidence']:.4g}% confidence on {rows} calibration rows: " + "; ".join(parts)


def check_seed(seed: int) -> int:
    from eenet_cli.errors import InputError

    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"must be between 0 and {MAX_SEED}, got {seed}", field="--seed")
    return seed


def select_split(preds, split: str | None):
    """(rows, description) a policy is reported on, the rule of apply and plot: ``split``
    (``all`` for every row); by default the test rows when the split column has any, else
    every row."""
    from eenet_cli.errors import InputError

    if split == "all":
        return preds, "all rows"
    if preds.split is None:
        if split is not None:
            raise InputError(f"has no split column, so --split {split} cannot select rows (use --split all)", source=preds.source, field="split")
        return preds, "all rows"
    if split is None:
        if not (preds.split == "test").any():
            return preds, "all rows"
        split = "test"
    mask = preds.split == split
    if not mask.any():
        have = ", ".join(sorted(set(preds.split.tolist())))
        raise InputError(f"no rows with split {split!r} (the file has {have}; --split all takes every row)", source=preds.source, field="split")
    return preds.rows(mask), f"split {split}"


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

# the options of a model run shared by profile and dump: (parameter, type, default)
_MODEL_PARAMS = [
    ("weights", WeightsOpt, None),
    ("model_arg", ModelArgsOpt, None),
    ("device", DeviceOpt, "cpu"),
    ("exits", ExitsOpt, None),
    ("tokenizer", TokenizerOpt, None),
    ("text_column", TextColumnOpt, None),
    ("label_column", LabelColumnOpt, None),
    ("max_length", MaxLengthOpt, None),
]


@dataclass(frozen=True)
class ModelOptions:
    """The model and text options of one run, as given on the command line."""

    weights: Optional[str] = None
    model_arg: Optional[list[str]] = None
    device: str = "cpu"
    exits: Optional[str] = None
    tokenizer: Optional[str] = None
    text_column: Optional[str] = None
    label_column: Optional[str] = None
    max_length: Optional[int] = None

    def load(self, model: str, device: str | None = None):
        """The model named by ``model`` with these options (weights, factory arguments, exits)."""
        from eenet_cli.errors import InputError
        from eenet_cli.runtime.load import load_model, parse_model_args

        args = parse_model_args(self.model_arg)
        if self.exits is not None:
            if "exits" in args:
                raise InputError("give the exits once: --exits or --model-arg exits=...", field="--exits")
            args["exits"] = self.exits
        return load_model(model, args, self.weights, device or self.device)

    def text(self, loaded):
        """How text data is read and tokenised for ``loaded``."""
        from eenet_cli.runtime.text_data import TextOptions

        return TextOptions(
            tokenizer=self.tokenizer, text_column=self.text_column, label_column=self.label_column,
            max_length=self.max_length, model=loaded.module,
        )

    @property
    def text_given(self) -> list[str]:
        """The text-data options given, by flag."""
        flags = {"tokenizer": "--tokenizer", "text_column": "--text-column", "label_column": "--label-column", "max_length": "--max-length"}
        return [flag for name, flag in flags.items() if getattr(self, name) is not None]


def model_options(command):
    """Give ``command`` the shared model options; it receives them as ``opts: ModelOptions``.

    Typer reads a command's signature, so the options are added to it here, once, instead
    of being repeated in every command that runs a model.
    """
    sig = inspect.signature(command, eval_str=True)  # the command's own annotations, resolved in its module
    kept = [p for p in sig.parameters.values() if p.name != "opts"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind) for name, kind, default in _MODEL_PARAMS]

    @functools.wraps(command)
    def run(**kwargs):
        opts = ModelOptions(**{name: kwargs.pop(name) for name, _, _ in _MODEL_PARAMS})
        return command(**kwargs, opts=opts)

    run.__signature__ = sig.replace(parameters=[*kept, *added])
    run.__annotations__ = {p.name: p.annotation for p in [*kept, *added]}
    return run
