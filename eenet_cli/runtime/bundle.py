"""Deployment bundles (``eenet export``): one file holding a staged model, its policy and
costs, that loads without unpickling anything.

A bundle is a zip archive (any file name; ``.eenet`` by convention) with these members and
no others:

=================================  ===========================================================
member                             what it holds
=================================  ===========================================================
``manifest.json``                  format ``eenet-bundle``, version, exits, classes, the input
                                   spec, the parts, and the sha256 and size of every other
                                   member (docs/spec.md §6)
``policy.json``                    the policy (docs/spec.md §2.4), its ``certificate`` included
``costs.json`` (optional)          the costs (docs/spec.md §2.2) and how they were measured
``parts/stage_<k>.json``           stage k as a ``torch.export`` graph (torch's JSON schema of
``parts/head_<k>.json``            an exported program), with a free batch axis
``parts/stage_<k>.safetensors``    that graph's parameters (``p.``), buffers (``b.``) and
``parts/head_<k>.safetensors``     tensor constants (``c.``), as raw tensors
``parts/stage_<k>.onnx``           optional (``eenet export --onnx``): stage k / head k as an
``parts/head_<k>.onnx``            ONNX model, weights embedded (:mod:`.onnx_parts`)
=================================  ===========================================================

Reading (:func:`read_bundle`) takes the file's bytes once and checks, before torch sees
anything: the zip structure (one level of names, no ``..``, no duplicates, known compression),
that the members are exactly the manifest's, the sha256 of every member, that every member is
JSON or safetensors (so no member is a pickle), that each graph calls torch operators only and
holds only plain shape expressions and guards (the checks of :mod:`eenet_cli.runtime.pt2`),
and the policy and costs as artifacts. Only then are the graphs rebuilt
(``torch._export.serde``'s JSON deserializer, given the tensors from safetensors) into
modules. An ``.onnx`` member is never a pickle or a zip; when the onnx package is
installed (always with ``backend="onnx"``) it is parsed and refused if any tensor keeps its
data outside the model, or it uses a non-standard domain or model-local functions
(:func:`eenet_cli.runtime.onnx_parts.check_onnx_member`). A problem is one
:class:`~eenet_cli.errors.InputError` line naming the member.

:func:`load_bundle` gives a :class:`Bundle`: an
:class:`~eenet_cli.runtime.early_exit.EarlyExitModel` of the bundled stages and heads and
the bundled policy, whose call on a batch returns ``(preds, exits, scores)``. With
``backend="onnx"`` the stages and heads are the bundle's ONNX parts on onnxruntime's CPU
provider instead, and the same runtime re-batches them. This module imports torch, numpy
and safetensors only (and eenet's own artifact checks); onnx and onnxruntime are imported
only for a bundle's ONNX parts.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eenet_cli.errors import EenetError, InputError, WorkFailed, shorten
from eenet_cli.runtime.early_exit import EarlyExitModel, check_policy
from eenet_cli.runtime.messages import first_line

FORMAT = "eenet-bundle"
VERSION = 1
MANIFEST = "manifest.json"
_PART = re.compile(r"parts/(stage|head)_([0-9]{1,4})\.(json|safetensors|onnx)")
BACKENDS = ("torch", "onnx")
_FIXED = {"policy.json", "costs.json"}
_ZIP_MAGIC = b"PK\x03\x04"
_KINDS = {"p.": "parameter", "b.": "buffer", "c.": "constant"}


# --------------------------------------------------------------------------- sniffing


def is_bundle(path: str | os.PathLike) -> bool:
    """True when ``path`` is a zip archive with a ``manifest.json`` at its root (whatever its
    name ends with): the file is sniffed, not judged by its extension."""
    p = Path(path)
    try:
        if not p.is_file():
            return False
        with open(p, "rb") as fh:
            if fh.read(4) != _ZIP_MAGIC:
                return False
        with zipfile.ZipFile(p) as zf:
            return any(i.filename == MANIFEST for i in zf.infolist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False


# --------------------------------------------------------------------------- writing


def _tree_map(fn, obj: Any) -> Any:
    """``fn`` on every tensor of a tensor / tuple / list / dict nesting."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_tree_map(fn, v) for v in obj) if not hasattr(obj, "_fields") else type(obj)(*(_tree_map(fn, v) for v in obj))
    return obj


def input_spec(x: Any) -> dict:
    """The shape (without the batch axis) and dtype of one sample of ``x``, for the manifest."""
    if isinstance(x, torch.Tensor):
        return {"kind": "tensor", "shape": [int(d) for d in x.shape[1:]], "dtype": str(x.dtype).removeprefix("torch.")}
    if isinstance(x, Mapping):
        return {"kind": "dict", "items": {str(k): input_spec(v) for k, v in x.items()}}
    if isinstance(x, (tuple, list)):
        return {"kind": "tuple", "items": [input_spec(v) for v in x]}
    raise InputError(f"the model input must be a tensor or a dict/tuple of tensors, got a {type(x).__name__}")


def _dynamic_shapes(h: Any, token_axis: int | None):
    """Dynamic-shape spec for ``torch.export``: the batch axis of every tensor is free (and,
    for a text model, its token axis)."""
    from torch.export import Dim

    def dims(t: torch.Tensor):
        if t.ndim == 0:
            return None
        d = {0: Dim.AUTO}
        if token_axis is not None and t.ndim > token_axis:
            d[token_axis] = Dim.AUTO
        return d

    if isinstance(h, torch.Tensor):
        return dims(h)
    if isinstance(h, Mapping):
        return {k: _dynamic_shapes(v, token_axis) for k, v in h.items()}
    if isinstance(h, (tuple, list)):
        return type(h)(_dynamic_shapes(v, token_axis) for v in h) if not hasattr(h, "_fields") else tuple(
            _dynamic_shapes(v, token_axis) for v in h
        )
    return None


def _export_part(module: nn.Module, h: Any, what: str, token_axis: int | None) -> tuple[bytes, bytes]:
    """One stage or head as (graph JSON bytes, safetensors bytes)."""
    import logging

    from safetensors.torch import save as save_safetensors
    from torch._export.serde.serialize import serialize

    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        ep = torch.export.export(module, (h,), dynamic_shapes=(_dynamic_shapes(h, token_axis),), strict=False)
        art = serialize(ep, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False)
    except EenetError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.export's own reasons, in one line
        raise InputError(f"{what} cannot be exported with torch.export ({first_line(e)})", field="MODEL") from None
    finally:
        logger.setLevel(level)
    params = set(ep.graph_signature.parameters)
    tensors: dict[str, torch.Tensor] = {}
    for name, t in ep.state_dict.items():
        tensors[("p." if name in params else "b.") + name] = t.detach().cpu().contiguous().clone()
    for name, t in ep.constants.items():
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{what} holds a constant {name!r} of type {type(t).__name__}; a bundle stores tensors only", field="MODEL")
        tensors["c." + name] = t.detach().cpu().contiguous().clone()
    return art.exported_program, save_safetensors(tensors)


def _example_batch(x: Any) -> Any:
    """At least 2 samples (so the batch axis is not taken for a constant 1)."""
    from eenet_cli.runtime.batch import batch_len

    b = batch_len(x)
    if b >= 2:
        return _tree_map(lambda t: t[:2], x)
    return _tree_map(lambda t: torch.cat([t, t], dim=0) if t.ndim else t, x)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_close(u, v) for u, v in zip(a, b))
    return a == b


def build_members(
    module: nn.Module, x: Any, *, policy: dict, costs: dict | None, model: str, extra: dict | None = None, onnx: bool = False
) -> dict[str, bytes]:
    """Every member of the bundle of ``module`` (a staged model on the CPU, in eval mode) and
    ``policy``, exported on the example input ``x`` (a batch); the manifest last.

    Each exported part is checked against the module at two batch sizes (one sample and
    three) before it is written: a part whose batch axis torch.export fixed is refused.
    With ``onnx``, every part is also exported to ONNX (tensor hidden states only) and
    checked on onnxruntime against the module at the same batch sizes (:mod:`.onnx_parts`).
    """
    from eenet_cli.artifacts.files import CREATED_BY, dumps
    from eenet_cli.artifacts.policy import validate_policy

    stages, heads = list(module.stages), list(module.heads)  # type: ignore[attr-defined]
    k = len(stages)
    validate_policy(policy, "policy")
    check_policy(policy, k, "policy")
    text = bool(getattr(module, "eenet_text", False))
    example = _example_batch(x)
    if onnx:
        from eenet_cli.runtime import onnx_parts

        onnx_parts.require_export()
        onnx_parts.tensor_states(stages, example)  # before any export: a dict/tuple state is one line
    members: dict[str, bytes] = {}
    parts = []
    h = example
    c = None
    for j in range(k):
        entry = {}
        for kind, part in (("stage", stages[j]), ("head", heads[j])):
            token_axis = None
            if text:  # a text model's token axis is free too: packed [B, 2|3, T] first, then [B, T, H + 1]
                token_axis = 2 if j == 0 and kind == "stage" and isinstance(h, torch.Tensor) and h.ndim == 3 else 1
            graph, weights = _export_part(part, h, f"{kind} {j + 1} of {k}", token_axis)
            gname, wname = f"parts/{kind}_{j}.json", f"parts/{kind}_{j}.safetensors"
            members[gname], members[wname] = graph, weights
            entry[kind] = {"graph": gname, "weights": wname}
            if onnx:
                oname = f"parts/{kind}_{j}.onnx"
                members[oname] = onnx_parts.export_part(part, h, f"{kind} {j + 1} of {k}", token_axis, oname)
                entry[kind]["onnx"] = oname
            with torch.no_grad():  # not inference_mode: its tensors cannot be traced by torch.export
                if kind == "stage":
                    h = part(h)
                else:
                    c = int(part(h).shape[-1])
        parts.append(entry)
    # every part, rebuilt from its bytes, equals the module at batch sizes 1 and 3
    _check_roundtrip(members, parts, module, example)
    onnx_info = onnx_parts.check_against_module(members, parts, module, example) if onnx else None
    members["policy.json"] = dumps(policy).encode("utf-8")
    if costs is not None:
        members["costs.json"] = dumps(costs).encode("utf-8")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "num_exits": k,
        "num_classes": c,
        "scores": "logits",
        "input": input_spec(x),
        "pack": "text" if text and callable(getattr(module, "eenet_pack_inputs", None)) else None,
        "model": model,
        "method": policy.get("method"),
        "certified": "certificate" in policy,
        "policy": "policy.json",
        "costs": "costs.json" if costs is not None else None,
        "parts": parts,
        "torch": torch.__version__,
        "created_by": CREATED_BY,
        **(extra or {}),
        **({"onnx": onnx_info} if onnx_info is not None else {}),
        "members": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in sorted(members.items())},
    }
    members[MANIFEST] = dumps(manifest).encode("utf-8")
    return members


def _check_roundtrip(members: dict[str, bytes], parts: list[dict], module: nn.Module, example: Any) -> None:
    """Rebuild every part from its bytes and compare it with the module at batch sizes 1 and 3."""
    stages = [_rebuild(members[p["stage"]["graph"]], members[p["stage"]["weights"]], p["stage"]["graph"], "export") for p in parts]
    heads = [_rebuild(members[p["head"]["graph"]], members[p["head"]["weights"]], p["head"]["graph"], "export") for p in parts]
    one = _tree_map(lambda t: t[:1], example)
    three = _tree_map(lambda t: torch.cat([t, t[:1]], 0) if t.ndim else t, example)
    with torch.no_grad():
        for x in (one, three):
            h_ref, h_got = x, x
            for j, (s_ref, h_mod, s_got, h_exp) in enumerate(zip(module.stages, module.heads, stages, heads)):  # type: ignore[attr-defined]
                h_ref = s_ref(h_ref)
                try:
                    h_got = s_got(h_got)
                    got = h_exp(h_got)
                except Exception as e:  # noqa: BLE001
                    raise InputError(
                        f"exit {j + 1}: the exported graph does not run at batch size {_len(x)} ({first_line(e)}); "
                        "the model must not fix its batch size",
                        field="MODEL",
                    ) from None
                ref = h_mod(h_ref)
                if not _close(got, ref):
                    raise WorkFailed(f"exit {j + 1}: the exported graph does not reproduce the model at batch size {_len(x)}")


def _len(x: Any) -> int:
    from eenet_cli.runtime.batch import batch_len

    return batch_len(x)


def write_bundle(path: str | os.PathLike, members: dict[str, bytes]) -> None:
    """The zip file, atomically (a failed write leaves nothing under ``path``)."""
    from eenet_cli.artifacts.files import atomic_path

    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in [MANIFEST, *sorted(n for n in members if n != MANIFEST)]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, members[name])


# --------------------------------------------------------------------------- reading


@dataclass
class BundleContents:
    """What a checked bundle holds (no torch module built yet)."""

    manifest: dict
    policy: dict
    costs: dict | None
    members: dict[str, bytes]
    source: str


def _refuse(message: str, source: str) -> InputError:
    return InputError(f"refused: {message}", source=source)


def read_checked(path: str | os.PathLike, source: str | None = None, *, onnx: bool = False) -> BundleContents:
    """The members of the bundle at ``path``, every check of the module docstring passed.

    ``onnx``: the ONNX members will be run, so their content checks are required (the onnx
    package must be installed); without it they run whenever onnx is installed."""
    from eenet_cli.artifacts.costs import parse_costs_json
    from eenet_cli.artifacts.files import loads_strict
    from eenet_cli.artifacts.policy import validate_policy
    from eenet_cli.memory import check_memory

    source = str(path) if source is None else source
    try:
        with open(path, "rb") as fh:  # read once: everything below sees these bytes only
            check_memory(os.fstat(fh.fileno()).st_size, "reading the bundle", source=source)
            data = fh.read()
    except FileNotFoundError:
        raise InputError("no such file", source=source) from None
    except IsADirectoryError:
        raise InputError("is a folder; an eenet bundle is one file written by eenet export", source=source) from None
    except OSError as e:
        raise InputError(f"cannot be read ({e.strerror or e})", source=source) from None
    if data[:4] != _ZIP_MAGIC:
        raise InputError("not an eenet bundle (a zip file written by eenet export)", source=source)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise InputError(f"not a readable zip archive ({e})", source=source) from None
    raw: dict[str, bytes] = {}
    seen: set[str] = set()
    from eenet_cli.memory import MEMORY_FRACTION, format_bytes, total_memory

    total = total_memory()
    for info in infos:
        name = info.filename
        if name.lower() in seen:
            raise _refuse(f"the archive names {name!r} twice", source)
        seen.add(name.lower())
        if info.is_dir() or "\\" in name or "\x00" in name or name.startswith("/") or ".." in name.split("/"):
            raise _refuse(f"member {name!r} is not a plain file name of a bundle", source)
        if name != MANIFEST and name not in _FIXED and not _PART.fullmatch(name):
            raise _refuse(f"member {name} is not one of the members an eenet bundle holds", source)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _refuse(f"member {name} uses an unsupported compression", source)
        if total is not None and info.file_size > MEMORY_FRACTION * total:
            raise _refuse(f"member {name} unpacks to {format_bytes(info.file_size)}; this machine has {format_bytes(total)}", source)
        try:
            raw[name] = zf.read(info)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
            raise InputError(f"member {name} is damaged ({first_line(e)})", source=source) from None
    if MANIFEST not in raw:
        raise InputError("not an eenet bundle (no manifest.json)", source=source)
    _check_kind(MANIFEST, raw[MANIFEST], source)
    manifest = loads_strict(raw[MANIFEST], f"{source}: {MANIFEST}")
    _check_manifest(manifest, f"{source}: {MANIFEST}")
    listed = manifest["members"]
    for name in raw:
        if name != MANIFEST and name not in listed:
            raise _refuse(f"member {name} is not listed in the manifest", source)
    for name, entry in listed.items():
        if name not in raw:
            raise InputError(f"member {name} listed in the manifest is missing", source=source)
        if hashlib.sha256(raw[name]).hexdigest() != entry["sha256"] or len(raw[name]) != entry["bytes"]:
            raise InputError(f"member {name} fails its sha256 check (changed after export); re-export the bundle", source=source)
    deep = onnx or (any(n.endswith(".onnx") for n in raw) and _onnx_available())
    for name, blob in raw.items():
        _check_kind(name, blob, source, deep_onnx=deep)
    policy = loads_strict(raw[manifest["policy"]], f"{source}: {manifest['policy']}")
    validate_policy(policy, f"{source}: {manifest['policy']}")
    check_policy(policy, manifest["num_exits"], f"{source}: {manifest['policy']}")
    costs = None
    if manifest.get("costs"):
        costs = loads_strict(raw[manifest["costs"]], f"{source}: {manifest['costs']}")
        parsed = parse_costs_json(costs, f"{source}: {manifest['costs']}")
        if parsed.num_exits != manifest["num_exits"]:
            raise InputError(f"has {parsed.num_exits} costs for {manifest['num_exits']} exits", source=f"{source}: {manifest['costs']}")
    return BundleContents(manifest, policy, costs, raw, source)


def _onnx_available() -> bool:
    from eenet_cli.runtime.onnx_parts import onnx_available

    return onnx_available()


def _check_kind(name: str, blob: bytes, source: str, *, deep_onnx: bool = False) -> None:
    """A ``.json`` member is a JSON object, a ``.safetensors`` member a safetensors file, an
    ``.onnx`` member neither a pickle nor a zip (and, with ``deep_onnx``, an ONNX model that
    passes :func:`~eenet_cli.runtime.onnx_parts.check_onnx_member`): anything else (a pickle
    above all) is refused, naming the member."""
    if name.endswith(".onnx"):
        if _is_pickle(blob):
            raise _refuse(f"member {name} is a pickle; a bundle's ONNX parts are ONNX protobuf models", source)
        if blob[:4] == _ZIP_MAGIC:
            raise _refuse(f"member {name} is a zip archive; a bundle's ONNX parts are ONNX protobuf models", source)
        if deep_onnx:
            from eenet_cli.runtime.onnx_parts import check_onnx_member

            check_onnx_member(blob, name, source)
        return
    try:
        if name.endswith(".safetensors"):
            _check_safetensors_header(blob, f"{source}: {name}")
        elif blob.lstrip()[:1] != b"{":
            raise InputError("not a JSON object", source=f"{source}: {name}")
    except InputError:
        if _is_pickle(blob):
            raise _refuse(f"member {name} is a pickle; a bundle holds JSON and safetensors only", source) from None
        raise


def _is_pickle(blob: bytes) -> bool:
    """A pickle stream (protocol 2+ starts with PROTO) or a torch.save zip (with a .pkl inside)."""
    if blob[:1] == b"\x80" and len(blob) > 1 and 2 <= blob[1] <= 5:
        return True
    if blob[:4] == _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(io.BytesIO(blob)) as inner:
                return any(n.endswith(".pkl") for n in inner.namelist())
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return False
    return False


def _check_manifest(m: Any, source: str) -> None:
    from eenet_cli.errors import VersionError

    if not isinstance(m, dict):
        raise InputError("expected a JSON object", source=source)
    if m.get("format") != FORMAT:
        raise InputError(f"expected format {FORMAT!r}, got {m.get('format')!r}", source=source, field="format")
    v = m.get("version")
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"expected a version number, got {v!r}", source=source, field="version")
    if v > VERSION:
        raise VersionError(f"bundle format version {v} is newer than this eenet understands (version {VERSION}); upgrade eenet to read it", source=source, field="version")
    if v < 1:
        raise InputError(f"unknown bundle format version {v!r}", source=source, field="version")
    k = m.get("num_exits")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
        raise InputError(f"expected a number of exits from 1 to 1000, got {k!r}", source=source, field="num_exits")
    c = m.get("num_classes")
    if isinstance(c, bool) or not isinstance(c, int) or c < 2:
        raise InputError(f"expected a number of classes >= 2, got {c!r}", source=source, field="num_classes")
    members = m.get("members")
    if not isinstance(members, dict) or not members:
        raise InputError("expected an object of members with their sha256", source=source, field="members")
    for name, e in members.items():
        if not isinstance(e, dict) or not isinstance(e.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", e["sha256"]):
            raise InputError(f"member {name!r} has no valid sha256", source=source, field="members")
        if isinstance(e.get("bytes"), bool) or not isinstance(e.get("bytes"), int):
            raise InputError(f"member {name!r} has no size in bytes", source=source, field="members")
    if m.get("policy") != "policy.json" or "policy.json" not in members:
        raise InputError("expected policy 'policy.json', listed in members", source=source, field="policy")
    if m.get("costs") not in (None, "costs.json") or (m.get("costs") and "costs.json" not in members):
        raise InputError("expected costs 'costs.json' (listed in members) or null", source=source, field="costs")
    parts = m.get("parts")
    if not isinstance(parts, list) or len(parts) != k:
        raise InputError(f"expected {k} parts (one stage and one head per exit)", source=source, field="parts")
    onnx = m.get("onnx")
    if onnx is not None and (not isinstance(onnx, dict) or isinstance(onnx.get("opset"), bool) or not isinstance(onnx.get("opset"), int)):
        raise InputError("expected onnx null or an object with the opset", source=source, field="onnx")
    for j, p in enumerate(parts):
        for kind in ("stage", "head"):
            want = {"graph": f"parts/{kind}_{j}.json", "weights": f"parts/{kind}_{j}.safetensors"}
            if onnx is not None:  # an ONNX bundle has an ONNX graph for every part, a plain one for none
                want["onnx"] = f"parts/{kind}_{j}.onnx"
            if not isinstance(p, dict) or p.get(kind) != want or any(n not in members for n in want.values()):
                raise InputError(f"part {j}: expected {kind} {want}, listed in members", source=source, field="parts")
    if m.get("pack") not in (None, "text"):
        raise InputError(f"expected pack null or 'text', got {m.get('pack')!r}", source=source, field="pack")
    if m.get("scores", "logits") not in ("logits", "probs"):
        raise InputError(f"expected scores 'logits' or 'probs', got {m.get('scores')!r}", source=source, field="scores")
    if not isinstance(m.get("input"), dict):
        raise InputError("expected the input spec (kind, shape, dtype)", source=source, field="input")


def _check_safetensors_header(blob: bytes, source: str) -> None:
    """A safetensors file: an 8-byte header length, a JSON header of tensors (dtype, shape,
    offsets) within the file, then raw bytes; keys p./b./c. only."""
    from eenet_cli.artifacts.files import loads_strict

    if len(blob) < 8:
        raise InputError("not a safetensors file (too short)", source=source)
    n = int.from_bytes(blob[:8], "little")
    if n <= 0 or 8 + n > len(blob):
        raise InputError("not a safetensors file (bad header length)", source=source)
    header = loads_strict(blob[8 : 8 + n], source)
    if not isinstance(header, dict):
        raise InputError("not a safetensors file (the header is not an object)", source=source)
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if key[:2] not in _KINDS or not isinstance(entry, dict):
            raise InputError(f"tensor {key!r} is not a parameter, buffer or constant of an exported graph", source=source)


def _rebuild(graph: bytes, weights: bytes, name: str, source: str, device: torch.device | None = None) -> nn.Module:
    """One checked part as a module: torch's JSON deserializer, given the safetensors tensors."""
    from safetensors.torch import load as load_safetensors
    from torch._export.serde import schema
    from torch._export.serde.serialize import (
        ExportedProgramDeserializer,
        _dict_to_dataclass,
    )

    from eenet_cli.artifacts.files import loads_strict
    from eenet_cli.runtime.pt2 import _check_model_json, _Refused

    doc = loads_strict(graph, f"{source}: {name}")
    try:
        _check_model_json(doc, name)
    except _Refused as e:
        raise _refuse(str(e), source) from None
    try:
        tensors = load_safetensors(weights)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"member {name.replace('.json', '.safetensors')} is not a readable safetensors file ({first_line(e)})", source=source) from None
    state: dict[str, torch.Tensor] = {}
    constants: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        kind, fqn = key[:2], key[2:]
        if kind == "p.":
            state[fqn] = nn.Parameter(t, requires_grad=False)
        elif kind == "b.":
            state[fqn] = t
        else:
            constants[fqn] = t
    import logging

    logger = logging.getLogger("torch._export.serde.serialize")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        program = _dict_to_dataclass(schema.ExportedProgram, doc)
        ep = ExportedProgramDeserializer().deserialize(program, state, constants, None)
        if device is not None and device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            ep = move_to_device_pass(ep, device)
        return ep.module()
    except Exception as e:  # noqa: BLE001
        raise InputError(f"member {name} is not a usable exported graph ({shorten(first_line(e), 160)})", source=source) from None
    finally:
        logger.setLevel(level)


class BundleModel(nn.Module):
    """The staged model of a bundle: ``stages`` and ``heads`` are the rebuilt graphs;
    ``forward(x)`` returns every exit's logits (docs/spec.md §5)."""

    def __init__(self, contents: BundleContents, stages: list[nn.Module], heads: list[nn.Module]):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)
        self.manifest = contents.manifest
        self.policy = contents.policy
        self.costs = contents.costs
        self.source = contents.source
        self.eenet_bundle = True
        self.backend = "torch"
        if contents.manifest.get("pack") == "text":
            self.eenet_text = True

    def forward(self, x: Any) -> list[torch.Tensor]:
        out, h = [], x
        for stage, head in zip(self.stages, self.heads):
            h = stage(h)
            out.append(head(h))
        return out

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        spec = self.manifest.get("input", {})
        if spec.get("kind") == "tensor" and isinstance(spec.get("shape"), list):
            return tuple(int(d) for d in spec["shape"])
        return None

    def eenet_make_inputs(self, batch_size: int, input_shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """``profile``'s random input, of the bundle's input dtype (token ids for a text bundle)."""
        spec = self.manifest.get("input", {})
        dtype = getattr(torch, str(spec.get("dtype", "float32")), torch.float32)
        shape = (batch_size, *input_shape)
        if self.manifest.get("pack") == "text":
            t = int(input_shape[-1])
            ids = torch.randint(5, int(self.manifest.get("vocab_size") or 1000), (batch_size, t), generator=generator)
            # the dtype the stages were exported with (a float copy of the ids when the data gave them as floats)
            return torch.stack([ids, torch.ones_like(ids)], dim=1).to(dtype)
        if dtype.is_floating_point:
            return torch.randn(shape, generator=generator).to(dtype)
        return torch.zeros(shape, dtype=dtype)

    def eenet_pack_inputs(self, x: Any) -> torch.Tensor:
        """Tokenised text as the packed tensor the first stage takes (text bundles only)."""
        if self.manifest.get("pack") != "text":
            raise TypeError("this bundle takes a tensor input")
        from eenet_cli.runtime.text_model import pack_inputs

        return pack_inputs(x)


def read_bundle(path: str | os.PathLike, device: str = "cpu", source: str | None = None, backend: str = "torch") -> BundleModel:
    """The checked bundle at ``path`` as a staged :class:`BundleModel` on ``device``: its
    ``torch.export`` graphs, or with ``backend="onnx"`` its ONNX graphs on onnxruntime's CPU
    provider (``eenet export --onnx``; needs the onnx extra)."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; expected torch or onnx", field="--backend")
    dev = torch.device(device)
    if backend == "onnx":
        from eenet_cli.runtime import onnx_parts

        onnx_parts.require_runtime()
        if dev.type != "cpu":
            raise InputError(f"the onnx backend runs on the CPU (onnxruntime's CPUExecutionProvider), not {device}; use --device cpu", field="--device")
    contents = read_checked(path, source, onnx=backend == "onnx")
    parts = contents.manifest["parts"]
    if backend == "onnx":
        if not isinstance(contents.manifest.get("onnx"), dict):
            raise InputError("this bundle has no ONNX graphs; re-export with --onnx", source=contents.source)
        stages, heads = onnx_parts.build_parts(contents.members, parts, contents.source)
        model = BundleModel(contents, stages, heads)
        model.backend = "onnx"
        return model
    stages = [_rebuild(contents.members[p["stage"]["graph"]], contents.members[p["stage"]["weights"]], p["stage"]["graph"], contents.source, dev) for p in parts]
    heads = [_rebuild(contents.members[p["head"]["graph"]], contents.members[p["head"]["weights"]], p["head"]["graph"], contents.source, dev) for p in parts]
    return BundleModel(contents, stages, heads)


class Bundle(EarlyExitModel):
    """A bundle ready to run: ``bundle(x)`` returns ``(preds, exits, scores)`` for a batch
    (``[B]`` int64, ``[B]`` int64 0-based exits, ``[B]`` float64 policy scores at the exit
    taken, NaN at the last exit), in the order of the batch."""

    def __init__(self, model: BundleModel):
        super().__init__(model, model.policy, scores=model.manifest.get("scores", "logits"))
        self.manifest = model.manifest
        self.costs = model.costs
        self.input_spec = model.manifest.get("input")

    def forward(self, x: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        if not isinstance(x, torch.Tensor) and self.manifest.get("pack") == "text":
            x = self.model.eenet_pack_inputs(x)  # type: ignore[operator]
        r = self.run(x)
        return r.preds, r.exits, r.scores  # type: ignore[return-value]


def load_bundle(path: str | os.PathLike, device: str = "cpu", backend: str = "torch") -> Bundle:
    """Load an ``eenet export`` bundle (torch and numpy only, nothing unpickled) as a callable
    module: ``preds, exits, scores = load_bundle("model.eenet")(x)``. ``backend="onnx"``
    runs the bundle's ONNX graphs (``eenet export --onnx``) on onnxruntime's CPU provider
    instead of its ``torch.export`` graphs; the runtime and the policy are the same."""
    return Bundle(read_bundle(path, device, backend=backend))
