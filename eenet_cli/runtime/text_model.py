"""Hugging Face text encoders as staged multi-exit models.

:func:`build_text_model` turns a BERT-like encoder (``embeddings`` and a
stack of layers ``encoder.layer``: BERT, MiniLM, RoBERTa, XLM-R, ELECTRA, ...) into a
*staged* multi-exit model (docs/spec.md §5) with exits after the encoder layers ``exits``
(1-based, e.g. ``3,6,9,12``; by default ``K = min(4, L)`` exits evenly spaced over the
``L`` layers, ``round(k·L/K)`` for ``k = 1..K``: ``3,6,9,12`` for BERT-base as in the paper's
BERT experiments, ``2,3,5,6`` for a 6-layer MiniLM):

* stage 0 = the embeddings + layers ``1..exits[0]``; stage k = layers ``exits[k-1]+1 .. exits[k]``;
* head k = **masked mean pooling** over the tokens (padding excluded; ``pooling="cls"``
  takes the first token's hidden state instead) followed by one ``nn.Linear(hidden, C)``,
  as in the paper (§4, "each early exit classifier consists of a fully-connected layer").
  Mean pooling is the default because it is what sentence encoders such as all-MiniLM-L6-v2
  were trained with and it gives usable features at early layers; the encoder's own
  pooler is not used.

The model's input is tokenised text: a dict (or :class:`transformers.BatchEncoding`) with
``input_ids`` and ``attention_mask`` (optionally ``token_type_ids``), a tuple
``(input_ids, attention_mask[, token_type_ids])``, or the same packed into one integer
tensor ``[B, 2 or 3, T]`` (rows: ids, mask, token types); a bare ``[B, T]`` tensor is ids
with no padding. Between stages the attention mask travels *inside* the hidden-state
tensor: a stage returns ``[B, T, H + 1]``, the hidden states with the 0/1 mask appended
as the last feature. So the state between stages is one plain tensor, and the runtime
(:class:`~eenet_cli.runtime.EarlyExitModel`, which drops finished rows with
``index_select``) and ``profile`` treat a text model like any other staged model. Each
layer gets the usual additive mask ``(1 - mask) * finfo.min`` of shape ``[B, 1, 1, T]``.

Three hooks tell the generic commands how to feed it (any staged model may define them):
``eenet_make_inputs(batch, input_shape, generator)`` makes ``profile``'s random input
(``--input-shape 64`` means 64 tokens), ``eenet_pack_inputs(x)`` turns a dict batch into
the packed tensor the runtime takes, and ``eenet_load_weights(path)`` loads ``--weights``
(a file of the heads only, keys ``heads.*``, leaves the pretrained encoder as it is; a
full state dict replaces everything, e.g. after fine-tuning the encoder).

Text data (tables of texts and labels, tokenisers) is :mod:`eenet_cli.runtime.text_data`.
transformers is imported only when a text model is actually built
(:func:`eenet_cli.runtime.hf.require_transformers`), so importing this module never
imports it. Nothing is ever downloaded: models are local folders (``local_files_only=True``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eenet_cli.errors import InputError
from eenet_cli.runtime.hf import (
    DEFAULT_MAX_LENGTH,
    quiet_transformers,
    require_transformers,
)
from eenet_cli.runtime.weights import check_weight_dtypes, load_weights, read_state_dict

DEFAULT_NUM_EXITS = 4
POOLINGS = ("mean", "cls")


# --------------------------------------------------------------------------- exits


def evenly_spaced_exits(num_layers: int, num_exits: int) -> list[int]:
    """``round(k·L/K)`` (halves up) for ``k = 1..K``: 1-based layer numbers, last = L.

    >>> evenly_spaced_exits(12, 4), evenly_spaced_exits(6, 3), evenly_spaced_exits(6, 4)
    ([3, 6, 9, 12], [2, 4, 6], [2, 3, 5, 6])
    """
    if not 1 <= num_exits <= num_layers:
        raise InputError(f"num_exits must be in [1, {num_layers}] for a {num_layers}-layer encoder, got {num_exits}", field="exits")
    return [int(math.floor(k * num_layers / num_exits + 0.5)) for k in range(1, num_exits + 1)]


def parse_exits(exits: Any, num_layers: int, num_exits: Any = None) -> list[int]:
    """Exit layers from ``"3,6,9"``, ``[3, 6, 9]`` or ``9``; evenly spaced when None.

    >>> parse_exits("3,6,9,12", 12), parse_exits(None, 12), parse_exits(None, 12, 3)
    ([3, 6, 9, 12], [3, 6, 9, 12], [4, 8, 12])
    """
    if num_exits is not None and (isinstance(num_exits, bool) or not isinstance(num_exits, int)):
        raise InputError(f"num_exits must be an integer, got {num_exits!r}", field="num_exits")
    if exits is None or (isinstance(exits, str) and not exits.strip()):
        k = num_exits if num_exits is not None else min(DEFAULT_NUM_EXITS, num_layers)
        return evenly_spaced_exits(num_layers, k)
    if isinstance(exits, bool):
        raise InputError(f"expected layer numbers like 3,6,9,12, got {exits!r}", field="exits")
    if isinstance(exits, int):
        values: list = [exits]
    elif isinstance(exits, str):
        values = [p.strip() for p in exits.replace(";", ",").split(",") if p.strip()]
    elif isinstance(exits, Sequence) or isinstance(exits, (torch.Tensor, np.ndarray)):
        values = list(exits)
    else:
        raise InputError(f"expected layer numbers like 3,6,9,12, got {exits!r}", field="exits")
    out: list[int] = []
    for v in values:
        try:
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError
            out.append(int(v))
        except (TypeError, ValueError):
            raise InputError(f"expected layer numbers like 3,6,9,12, got {exits!r}", field="exits") from None
    if not out:
        raise InputError("no exit layers given", field="exits")
    if any(e < 1 or e > num_layers for e in out):
        raise InputError(f"exit layers must be in [1, {num_layers}] (1-based) for a {num_layers}-layer encoder, got {out}", field="exits")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise InputError(f"exit layers must be strictly increasing, got {out}", field="exits")
    if num_exits is not None and num_exits != len(out):
        raise InputError(f"num_exits={num_exits} but {len(out)} exit layers were given ({out})", field="exits")
    return out


# --------------------------------------------------------------------------- inputs


def _as_long(t: Any, what: str) -> torch.Tensor:
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t))
    elif not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.dtype.is_floating_point:
        t = torch.round(t)  # e.g. a packed tensor read back as float32 (exact below 2**24)
    elif t.dtype == torch.bool:
        pass
    elif not t.dtype.is_signed and t.dtype != torch.uint8:
        raise TypeError(f"{what} has dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"{what} must be [batch, tokens], got shape {list(t.shape)}")
    return t.long()


def split_inputs(x: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(input_ids, attention_mask, token_type_ids or None)`` from any accepted input form."""
    if isinstance(x, Mapping):
        if "input_ids" not in x:
            raise ValueError(f"a text batch needs 'input_ids' (and 'attention_mask'); got keys {sorted(map(str, x))}")
        ids, mask, types = x["input_ids"], x.get("attention_mask"), x.get("token_type_ids")
    elif isinstance(x, (tuple, list)):
        if not 1 <= len(x) <= 3:
            raise ValueError(f"a text batch tuple is (input_ids, attention_mask[, token_type_ids]), got {len(x)} items")
        ids, mask, types = (list(x) + [None, None])[:3]
    elif isinstance(x, torch.Tensor):
        if x.ndim == 2:
            ids, mask, types = x, None, None
        elif x.ndim == 3 and x.shape[1] in (2, 3):
            ids, mask = x[:, 0], x[:, 1]
            types = x[:, 2] if x.shape[1] == 3 else None
        else:
            raise ValueError(
                f"a text model takes token ids [batch, tokens] or packed [batch, 2|3, tokens] (ids, mask[, token types]), got shape {list(x.shape)}"
            )
    else:
        raise TypeError(f"a text model takes tokenised input (input_ids, attention_mask), got a {type(x).__name__}")
    ids = _as_long(ids, "input_ids")
    mask = torch.ones_like(ids) if mask is None else _as_long(mask, "attention_mask")
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {list(mask.shape)} but input_ids {list(ids.shape)}")
    if types is not None:
        types = _as_long(types, "token_type_ids")
        if types.shape != ids.shape:
            raise ValueError(f"token_type_ids has shape {list(types.shape)} but input_ids {list(ids.shape)}")
    return ids, mask, types


def pack_inputs(x: Any) -> torch.Tensor:
    """The packed form ``[B, 2 or 3, T]`` (ids, mask[, token types]) of any accepted input."""
    ids, mask, types = split_inputs(x)
    rows = [ids, mask] + ([types] if types is not None else [])
    return torch.stack(rows, dim=1)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, T]`` 0/1 mask -> ``[B, 1, 1, T]`` additive attention mask (0 kept, finfo.min dropped)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def pool(h: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """Pool a stage's output ``[B, T, H + 1]`` (mask in the last feature) to ``[B, H]``."""
    hidden, mask = h[..., :-1], h[..., -1:]
    if pooling == "cls":
        return hidden[:, 0]
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


# --------------------------------------------------------------------------- modules


class TextStage(nn.Module):
    """Encoder layers between two exits; the first stage also embeds the tokens.

    Input: tokenised text (first stage) or the previous stage's ``[B, T, H + 1]``.
    Output: ``[B, T, H + 1]``, hidden states with the attention mask as the last feature.
    """

    def __init__(self, layers: Sequence[nn.Module], embeddings: nn.Module | None = None, project: nn.Module | None = None):
        super().__init__()
        self.embeddings = embeddings
        self.project = project  # ELECTRA's embeddings_project, when the embedding size differs
        self.layers = nn.ModuleList(layers)

    def forward(self, h: Any) -> torch.Tensor:
        if self.embeddings is not None:
            ids, mask, types = split_inputs(h)
            hidden = self.embeddings(input_ids=ids, token_type_ids=types)
            if self.project is not None:
                hidden = self.project(hidden)
            mask = mask.to(hidden.dtype)
        else:
            if not isinstance(h, torch.Tensor) or h.ndim != 3:
                raise TypeError("a later text stage takes the previous stage's [batch, tokens, hidden + 1] tensor")
            hidden, mask = h[..., :-1], h[..., -1]
        ext = additive_mask(mask, hidden.dtype)
        for layer in self.layers:
            out = layer(hidden, attention_mask=ext)
            hidden = out[0] if isinstance(out, (tuple, list)) else out  # transformers 4.x returns a tuple
        return torch.cat([hidden, mask.unsqueeze(-1).to(hidden.dtype)], dim=-1)


class PooledLinearHead(nn.Module):
    """An exit: pool the tokens (masked mean, or [CLS]) and one linear layer to the classes."""

    def __init__(self, hidden_size: int, num_classes: int, pooling: str = "mean"):
        super().__init__()
        self.pooling = pooling
        self.linear = nn.Linear(hidden_size, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(pool(h, self.pooling))

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}"


def _encoder_parts(encoder: nn.Module) -> tuple[nn.Module, list[nn.Module], nn.Module | None]:
    base = getattr(encoder, "base_model", encoder)  # BertForSequenceClassification -> its BertModel
    emb = getattr(base, "embeddings", None)
    enc = getattr(base, "encoder", None)
    layers = getattr(enc, "layer", None) if enc is not None else None
    if emb is None or layers is None or not isinstance(layers, (nn.ModuleList, list, tuple)) or len(layers) == 0:
        raise InputError(
            f"expected a BERT-like encoder with .embeddings and .encoder.layer (BERT, MiniLM, RoBERTa, ELECTRA, ...), got {type(encoder).__name__}",
            field="MODEL",
        )
    return emb, list(layers), getattr(base, "embeddings_project", None)


class TextStagedModel(nn.Module):
    """A staged multi-exit text classifier over a BERT-like encoder (see the module docstring).

    ``stages[k]`` and ``heads[k]`` follow docs/spec.md §5; ``forward(x)`` returns the K exit logits.
    ``exits`` are the 1-based encoder layers the exits sit after.
    """

    eenet_text = True

    def __init__(self, encoder: nn.Module, *, num_classes: int, exits: Sequence[int], pooling: str = "mean",
                 source: str | None = None, max_length: int = DEFAULT_MAX_LENGTH):
        super().__init__()
        if pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}", field="pooling")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise InputError(f"num_classes must be an integer >= 2, got {num_classes!r}", field="num_classes")
        emb, layers, project = _encoder_parts(encoder)
        exits = parse_exits(list(exits), len(layers))
        config = getattr(encoder, "config", None)
        hidden = int(getattr(config, "hidden_size", 0) or 0)
        if hidden <= 0:
            raise InputError("the encoder's config has no hidden_size", field="MODEL")
        bounds = [0, *exits]
        self.stages = nn.ModuleList(
            [TextStage(layers[a:b], emb if k == 0 else None, project if k == 0 else None) for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        )
        self.heads = nn.ModuleList([PooledLinearHead(hidden, num_classes, pooling) for _ in exits])
        self.config = config
        self.exits = list(exits)
        self.num_layers = len(layers)
        self.num_classes = num_classes
        self.pooling = pooling
        self.hidden_size = hidden
        self.source = str(source) if source is not None else None
        self.tokenizer_path = self.source  # where `eenet dump` looks for the tokenizer by default
        self.max_length = int(max_length)

    def forward(self, x: Any) -> list[torch.Tensor]:
        out, h = [], x
        for stage, head in zip(self.stages, self.heads):
            h = stage(h)
            out.append(head(h))
        return out

    # ----------------------------------------------------------------- hooks for the commands

    def eenet_pack_inputs(self, x: Any) -> torch.Tensor:
        """A dict/tuple batch as one packed tensor (what the runtime takes)."""
        return pack_inputs(x)

    def eenet_make_inputs(self, batch_size: int, input_shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
        """``profile``'s input: random token ids, no padding; ``input_shape = (tokens,)``."""
        if len(input_shape) != 1:
            raise InputError(f"a text model's --input-shape is the number of tokens per sample (e.g. 64), got {','.join(map(str, input_shape))}", field="--input-shape")
        t = int(input_shape[0])
        limit = int(getattr(self.config, "max_position_embeddings", 0) or 0)
        if limit and t > limit - 2:  # RoBERTa-style position ids start after the padding index
            raise InputError(f"{t} tokens is more than this encoder takes ({limit} positions)", field="--input-shape")
        vocab = int(getattr(self.config, "vocab_size", 0) or 0) or 1000
        low = min(5, vocab - 1)  # clear of the usual special/padding ids
        ids = torch.randint(low, vocab, (batch_size, t), generator=generator)
        return torch.stack([ids, torch.ones_like(ids)], dim=1)

    def eenet_load_weights(self, path: str) -> None:
        """``--weights``: a file of the heads only (keys ``heads.*``) or a full state dict."""
        load_text_weights(self, path)

    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith("heads.")}

    def weights_metadata(self) -> dict[str, str]:
        """What a weights file needs to rebuild this model (safetensors metadata, all strings)."""
        return {
            "eenet.exits": ",".join(map(str, self.exits)),
            "eenet.pooling": self.pooling,
            "eenet.num_classes": str(self.num_classes),
            "eenet.hidden_size": str(self.hidden_size),
            "eenet.num_layers": str(self.num_layers),
        }


# --------------------------------------------------------------------------- building


def _read_weights_metadata(path: str) -> dict[str, str]:
    if not str(path).endswith(".safetensors") or not Path(path).is_file():
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - the loader reports an unreadable file properly
        return {}


def _heads_from_state(state: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(number of heads, classes) from a heads-only state dict."""
    ks = sorted({int(k.split(".")[1]) for k in state if k.startswith("heads.") and k.split(".")[1].isdigit()})
    w = state.get("heads.0.linear.weight")
    if not ks or w is None or w.ndim != 2:
        return None
    return len(ks), int(w.shape[0])


def load_text_weights(model: TextStagedModel, path: str) -> None:
    """Load heads-only weights (keys ``heads.*``; the encoder stays pretrained) or a full state dict."""
    state = read_state_dict(path)
    if not all(k.startswith("heads.") for k in state):
        load_weights(model, path, "text model")  # full state dict, strictly
        return
    own = model.heads_state_dict()
    meta = _read_weights_metadata(path)
    got = _heads_from_state(state)
    if got is not None and got[0] != len(model.heads):
        hint = f" (the file was saved with exits {meta['eenet.exits']}: add --exits {meta['eenet.exits']})" if meta.get("eenet.exits") else ""
        raise InputError(f"holds {got[0]} exit heads but the model has {len(model.heads)} exits {model.exits}{hint}", source=path, field="--weights")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}") if missing or unexpected else (
            f"shape of {shapes[0]}: file {list(state[shapes[0]].shape)} vs model {list(own[shapes[0]].shape)}"
        )
        raise InputError(f"the heads do not fit this model ({what}); check num_classes, pooling and the encoder", source=path, field="--weights")
    check_weight_dtypes(state, own, path, "text model")
    model.load_state_dict(state, strict=False)


def _coerce_int(v: Any, name: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise InputError(f"expected an integer, got {v!r}", field=name)
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InputError(f"expected an integer, got {v!r}", field=name) from None
    if not f.is_integer():
        raise InputError(f"expected an integer, got {v!r}", field=name)
    return int(f)


def build_text_model(
    path: Any,
    num_classes: int | None = None,
    *,
    exits: Any = None,
    num_exits: int | None = None,
    pooling: str | None = None,
    weights: str | None = None,
    seed: int = 0,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> TextStagedModel:
    """Build a staged multi-exit text model in one call.

    ``path`` is a local Hugging Face model folder (``config.json`` + weights, as written by
    ``save_pretrained``; never downloaded), a ``transformers`` config (a randomly
    initialised encoder, seeded by ``seed``), or an encoder module. ``exits``: 1-based
    layers (``"3,6,9,12"``, a list, or one int); default ``num_exits`` (4, at most L)
    evenly spaced. ``num_classes``: the classes of the heads; by default taken from
    ``weights``, or from the config of a sequence-classification checkpoint. ``weights``: a
    heads-only file (the encoder stays pretrained) or a full state dict; a heads file
    saved by ``scripts/train_text_exits.py`` also supplies ``exits``, ``pooling`` and
    ``num_classes`` when they are not given. The new heads are initialised from ``seed``
    without touching the global random state, so the same call gives the same model.

    Example (``m.exits == [1, 2, 3, 4]``, four stages and four heads)::

        from transformers import BertConfig
        m = build_text_model(BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                        intermediate_size=64, vocab_size=100), num_classes=3)
        logits = m({"input_ids": ids, "attention_mask": mask})   # K tensors [B, 3]
    """
    transformers = require_transformers()
    num_classes = _coerce_int(num_classes, "num_classes")
    num_exits = _coerce_int(num_exits, "num_exits")
    seed = _coerce_int(seed, "seed") or 0
    max_length = _coerce_int(max_length, "max_length") or DEFAULT_MAX_LENGTH
    if max_length < 1:
        raise InputError(f"must be at least 1, got {max_length}", field="max_length")
    meta = _read_weights_metadata(weights) if weights else {}
    if exits is None and num_exits is None and meta.get("eenet.exits"):
        exits = meta["eenet.exits"]
    if pooling is None:
        pooling = meta.get("eenet.pooling", "mean")
    if num_classes is None and meta.get("eenet.num_classes"):
        num_classes = int(meta["eenet.num_classes"])
    if num_classes is None and weights:
        got = _heads_from_state(read_state_dict(weights))
        num_classes = got[1] if got else None
    source = None
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(seed)
        if isinstance(path, nn.Module):
            encoder = path
        elif isinstance(path, transformers.PretrainedConfig):
            encoder = transformers.AutoModel.from_config(path)
        elif isinstance(path, (str, Path)):
            p = Path(path)
            if not p.is_dir():
                raise InputError("no such folder; a text model is a local Hugging Face model folder (config.json + weights); eenet never downloads", source=str(path), field="MODEL")
            if not (p / "config.json").is_file():
                raise InputError("has no config.json; expected a Hugging Face model folder (as written by save_pretrained)", source=str(path), field="MODEL")
            try:
                config = transformers.AutoConfig.from_pretrained(str(p), local_files_only=True)
            except Exception as e:  # noqa: BLE001
                raise InputError(f"not a readable Hugging Face config ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})", source=str(p / "config.json")) from None
            if num_classes is None and any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or [])):
                num_classes = int(config.num_labels)
            try:
                encoder = transformers.AutoModel.from_pretrained(str(p), local_files_only=True)
            except Exception as e:  # noqa: BLE001
                msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise InputError(f"loading the model failed ({type(e).__name__}: {msg})", source=str(path), field="MODEL") from None
            source = str(p)
        else:
            raise InputError(f"expected a model folder, a transformers config or an encoder module, got a {type(path).__name__}", field="MODEL")
        if num_classes is None:
            raise InputError("give the number of classes (num_classes=C, e.g. --model-arg num_classes=2), or --weights with trained heads", field="num_classes")
        _, layers, _ = _encoder_parts(encoder)
        exit_layers = parse_exits(exits, len(layers), num_exits)
        model = TextStagedModel(encoder, num_classes=num_classes, exits=exit_layers, pooling=pooling, source=source, max_length=max_length)
    if weights:
        load_text_weights(model, weights)
    return model.eval()


#: the factory for the command line: ``eenet dump eenet_cli.runtime.text_model:text_model --model-arg path=DIR ...``
#: (a model folder given directly as MODEL does the same)
text_model = build_text_model
