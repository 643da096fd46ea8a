"""The optional ONNX parts of a bundle (``eenet export --onnx``, ``load_bundle(path,
backend="onnx")``).

With ``--onnx`` every stage and head is also exported with ``torch.onnx.export(...,
dynamo=True, optimize=True)`` (batch axis free, and a text model's token axis), serialised
with its weights embedded, and stored as ``parts/stage_<k>.onnx`` / ``parts/head_<k>.onnx``.
Only a part that takes and returns one tensor can go to ONNX.

An ONNX member is checked before onnxruntime sees it (:func:`check_onnx_member`): it parses
as one ``ModelProto`` (``onnx.load_model_from_string``, which never opens a file); no tensor
anywhere in it keeps its data outside the model (``data_location == EXTERNAL``: a path that
onnxruntime would open); every operator set and node is of the standard domains ``""``,
``ai.onnx`` or ``ai.onnx.ml``; it defines no model-local functions and holds no training
information; its graph takes one input and gives one output. Each session is then built
from those checked bytes (never from a path) on onnxruntime's ``CPUExecutionProvider``.

This module imports onnx, onnxscript and onnxruntime only inside its functions: a bundle
loads with the torch backend without them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from eenet_cli.errors import InputError, WorkFailed, shorten
from eenet_cli.runtime.messages import first_line

EXPORTER = "torch.onnx dynamo"
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
EXPORT_EXTRA = "--onnx needs the onnx extra: pip install 'eenet[onnx]'"
RUNTIME_EXTRA = "the onnx backend needs the onnx extra (onnx and onnxruntime): pip install 'eenet[onnx]'"
TOLERANCE = 1e-4  # max |onnx - torch| per part, relative to the output's scale when that is above 1
CHECK_BATCH_SIZES = (1, 3)
PROVIDERS = ["CPUExecutionProvider"]


# --------------------------------------------------------------------------- extras


def require_export() -> None:
    """onnx, onnxscript (torch's ONNX exporter) and onnxruntime (the check at export), or one line."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise InputError(EXPORT_EXTRA) from None


def require_runtime() -> None:
    """onnx (the checks) and onnxruntime (the sessions), or one line."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise InputError(RUNTIME_EXTRA, field="--backend") from None


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def versions() -> dict:
    import onnx
    import onnxruntime
    import onnxscript

    return {"onnx": onnx.__version__, "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}


# --------------------------------------------------------------------------- writing


def tensor_states(stages: list[nn.Module], example: Any) -> None:
    """One line unless the input and every stage's output are single tensors."""
    if not isinstance(example, torch.Tensor):
        raise InputError(f"--onnx needs tensor hidden states; the model's input is a {_kind(example)}")
    h = example
    with torch.no_grad():
        for j, stage in enumerate(stages):
            h = stage(h)
            if not isinstance(h, torch.Tensor):
                raise InputError(
                    f"--onnx needs tensor hidden states; stage {j + 1} of {len(stages)} passes a {_kind(h)} "
                    "(export without --onnx for dict/tuple states)"
                )


def _kind(obj: Any) -> str:
    if isinstance(obj, dict):
        return "dict"
    if isinstance(obj, tuple):
        return "named tuple" if hasattr(obj, "_fields") else "tuple"
    return type(obj).__name__


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines, warnings and logs kept off stdout and stderr (stdout may be the bundle)."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir", "torch.fx.experimental.symbolic_shapes")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_part(module: nn.Module, h: torch.Tensor, what: str, token_axis: int | None, name: str) -> bytes:
    """One stage or head as the bytes of an ONNX model, its weights embedded."""
    from torch.export import Dim

    dims: dict | None = None
    if h.ndim:
        dims = {0: Dim.AUTO}
        if token_axis is not None and h.ndim > token_axis:
            dims[token_axis] = Dim.AUTO
    try:
        with _quiet():
            program = torch.onnx.export(
                module, (h,), None, dynamic_shapes=(dims,), dynamo=True, optimize=True, verbose=False,
                input_names=["x"], output_names=["y"],
            )
            blob = program.model_proto.SerializeToString()
    except Exception as e:  # noqa: BLE001 - the exporter's own reasons, in one line
        raise InputError(f"{what} cannot be exported to ONNX ({shorten(_reason(e), 200)}); export without --onnx", field="--onnx") from None
    try:
        check_onnx_member(blob, name, "export")
    except InputError as e:
        raise InputError(f"{what}: torch's ONNX exporter wrote a graph a bundle refuses ({e})", field="--onnx") from None
    return blob


def _reason(e: BaseException) -> str:
    """The innermost cause of an exporter error, in one line (its outer errors say only which step failed)."""
    import re

    seen = 0
    while e.__cause__ is not None and seen < 20:
        e, seen = e.__cause__, seen + 1
    return re.sub(r"\x1b\[[0-9;]*m", "", first_line(e))


def check_against_module(members: dict[str, bytes], parts: list[dict], module: nn.Module, example: torch.Tensor) -> dict:
    """Every ONNX part on onnxruntime against the module's own part, at batch sizes 1 and 3
    (each fed the module's hidden state): max |onnx - torch| <= 1e-4 times max(1, |torch|'s
    max), or one line naming the exit. Returns what the manifest records."""
    sessions = [(OnnxPart(members[p["stage"]["onnx"]], p["stage"]["onnx"], "export"), OnnxPart(members[p["head"]["onnx"]], p["head"]["onnx"], "export")) for p in parts]
    worst = 0.0
    with torch.no_grad():
        for b in CHECK_BATCH_SIZES:
            x = torch.cat([example] * (b // len(example) + 1))[:b]
            h = x
            for j, (stage, head, (s_onnx, h_onnx)) in enumerate(zip(module.stages, module.heads, sessions)):  # type: ignore[attr-defined]
                h_next = stage(h)
                for kind, mod, got_part, inp, ref in (("stage", stage, s_onnx, h, h_next), ("head", head, h_onnx, h_next, None)):
                    if ref is None:
                        ref = mod(inp)
                    try:
                        got = got_part(inp)
                    except Exception as e:  # noqa: BLE001
                        raise InputError(
                            f"exit {j + 1}: the ONNX graph of the {kind} does not run at batch size {b} ({shorten(first_line(e), 160)}); "
                            "the model must not fix its batch size",
                            field="--onnx",
                        ) from None
                    if tuple(got.shape) != tuple(ref.shape):
                        raise WorkFailed(f"exit {j + 1}: the ONNX graph of the {kind} gives shape {tuple(got.shape)}, the model {tuple(ref.shape)} at batch size {b}")
                    diff, scale = max_abs_diff(got, ref)
                    if not diff <= TOLERANCE * max(1.0, scale):
                        raise WorkFailed(
                            f"exit {j + 1}: the ONNX graph of the {kind} differs from the model by {diff:.3g} at batch size {b} "
                            f"(allowed {TOLERANCE * max(1.0, scale):.3g}); export without --onnx"
                        )
                    worst = max(worst, diff)
                h = h_next
    import onnx

    opsets = [
        int(o.version)
        for p in parts
        for kind in ("stage", "head")
        for o in onnx.load_model_from_string(members[p[kind]["onnx"]]).opset_import
        if o.domain in ("", "ai.onnx")
    ]
    return {
        "opset": max(opsets) if opsets else None,
        "exporter": EXPORTER,
        "torch": torch.__version__,
        **versions(),
        "providers": list(PROVIDERS),
        "checked_batch_sizes": list(CHECK_BATCH_SIZES),
        "max_abs_diff": float(f"{worst:.3g}"),
    }


def max_abs_diff(got: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """max |got - ref| and max |ref| (in float64; 0 for empty tensors)."""
    if ref.numel() == 0:
        return 0.0, 0.0
    a, r = got.detach().double().cpu(), ref.detach().double().cpu()
    fa, fr = torch.isfinite(a), torch.isfinite(r)
    if not bool(fr.all() and fa.all()):  # NaN and infinities must sit in the same places, with the same values
        def odd(t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
            return t[~f].nan_to_num(nan=0.0, posinf=1.0, neginf=-1.0)

        if not torch.equal(fa, fr) or not torch.equal(odd(a, fa), odd(r, fr)) or not torch.equal(torch.isnan(a), torch.isnan(r)):
            return float("inf"), 0.0
        a, r = a[fr], r[fr]
        if r.numel() == 0:
            return 0.0, 0.0
    return float((a - r).abs().max()), float(r.abs().max())


# --------------------------------------------------------------------------- reading


def _refuse(message: str, source: str) -> InputError:
    return InputError(f"refused: {message}", source=source)


def check_onnx_member(blob: bytes, name: str, source: str):
    """The checks of the module docstring on one ONNX member; the parsed model, or one line naming the member."""
    import onnx
    from onnx import TensorProto

    try:
        model = onnx.load_model_from_string(blob)  # parses the bytes only: no external data is loaded
    except Exception as e:  # noqa: BLE001
        raise InputError(f"member {name} is not a readable ONNX model ({shorten(first_line(e), 120)})", source=source) from None
    if not model.HasField("graph"):
        raise InputError(f"member {name} is not an ONNX model (no graph)", source=source)
    if len(model.functions):
        raise _refuse(f"member {name} defines model-local functions ({shorten(', '.join(f'{f.domain}:{f.name}' for f in model.functions), 80)}); a bundle's ONNX parts use standard operators only", source)
    if len(model.training_info):
        raise _refuse(f"member {name} holds training information; a bundle's ONNX parts are inference graphs", source)
    for op in model.opset_import:
        if op.domain not in ALLOWED_DOMAINS:
            raise _refuse(f"member {name} imports operator set {op.domain!r}; a bundle's ONNX parts use the domains '', ai.onnx and ai.onnx.ml only", source)
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise InputError(f"member {name} has {len(graph.input)} inputs and {len(graph.output)} outputs; an ONNX part takes one tensor and gives one", source=source)
    # every tensor of every (sub)graph, walked without recursion
    graphs = [graph]
    while graphs:
        g = graphs.pop()
        tensors = list(g.initializer)
        for sp in g.sparse_initializer:
            tensors += [sp.values, sp.indices]
        for node in g.node:
            if node.domain not in ALLOWED_DOMAINS:
                raise _refuse(f"member {name} calls operator {shorten(node.domain, 60)}::{shorten(node.op_type, 60)}; a bundle's ONNX parts use the domains '', ai.onnx and ai.onnx.ml only", source)
            for a in node.attribute:
                if a.HasField("t"):
                    tensors.append(a.t)
                tensors += list(a.tensors)
                for sp in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors):
                    tensors += [sp.values, sp.indices]
                if a.HasField("g"):
                    graphs.append(a.g)
                graphs += list(a.graphs)
        for t in tensors:
            if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
                where = next((e.value for e in t.external_data if e.key == "location"), "")
                raise _refuse(
                    f"member {name} keeps tensor {shorten(t.name, 60)!r} in external data"
                    + (f" ({shorten(where, 60)!r})" if where else "")
                    + "; a bundle's ONNX parts embed their weights",
                    source,
                )
    return model


_NUMPY = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


class OnnxPart(nn.Module):
    """One checked ONNX part as a module on onnxruntime's CPU provider: ``forward`` takes a
    torch tensor, runs the session on its numpy copy and returns a torch tensor (on the CPU).
    The session is built from the member's bytes, never from a path."""

    def __init__(self, blob: bytes, name: str, source: str):
        super().__init__()
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, torch.get_num_threads())  # as torch: `profile --threads` applies to both
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(blob, sess_options=so, providers=list(PROVIDERS))
        except Exception as e:  # noqa: BLE001
            raise InputError(f"member {name} is not a usable ONNX graph ({shorten(first_line(e), 160)})", source=source) from None
        (inp,), (out,) = self.session.get_inputs(), self.session.get_outputs()
        self.input_name, self.output_name = inp.name, out.name
        self.input_dtype = _NUMPY.get(inp.type)
        self.member = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.member} takes one tensor, got a {_kind(x)}")
        a = x.detach().cpu().numpy()
        if self.input_dtype is not None and a.dtype != self.input_dtype:
            a = a.astype(self.input_dtype)
        try:
            (y,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(a)})
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors are not RuntimeErrors
            raise RuntimeError(f"{self.member}: {first_line(e)}") from None
        return torch.from_numpy(np.ascontiguousarray(y))

    def extra_repr(self) -> str:
        return f"{self.member}, onnxruntime {'/'.join(self.session.get_providers())}"


def build_parts(members: dict[str, bytes], parts: list[dict], source: str) -> tuple[list[nn.Module], list[nn.Module]]:
    """The checked ONNX members of a bundle as stages and heads."""
    stages = [OnnxPart(members[p["stage"]["onnx"]], p["stage"]["onnx"], source) for p in parts]
    heads = [OnnxPart(members[p["head"]["onnx"]], p["head"]["onnx"], source) for p in parts]
    return stages, heads
