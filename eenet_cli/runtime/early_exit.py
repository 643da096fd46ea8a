"""Running a policy for real on a staged model (Algorithm 2 of the paper).

:class:`EarlyExitModel` wraps a staged multi-exit model (``stages`` and ``heads``) and a
policy (the JSON dict of docs/spec.md §2.4). For each batch it runs stage k and head k only for
the samples still running, asks the policy (numpy, :class:`~eenet_cli.core.online.OnlinePolicy`,
from exits 1..k only) which of them stop, and carries only the others on to stage k+1.
At batch size 1 it simply stops computing at the accepted exit.

*Re-batching.* The hidden state handed from stage k to stage k+1 may be one tensor or any
nesting of tuples, lists and dicts of tensors (a text model's hidden states and attention
mask, say). After each exit decision :func:`gather_rows` keeps, in every tensor of the state
whose first axis is the batch, only the rows of the samples that go on, in their order
(one ``index_select`` per tensor); anything else in the state (a scalar, a tensor without
the batch axis) passes unchanged. Results are scattered back to each sample's place in the
batch, so the order of the batch is kept.

The decisions equal the offline :func:`~eenet_cli.core.policy.apply_to_features` ones on
the same logits: both use the same arithmetic. (Logits computed on a different batch can
differ in the last bits, so a sample whose score sits exactly on a threshold may, rarely,
go the other way.)

>>> import torch
>>> from eenet_cli.runtime.models import MultiExitMLP
>>> net = MultiExitMLP(in_features=4, hidden=8, num_exits=2, num_classes=3).eval()
>>> policy = {"num_exits": 2, "num_classes": 3, "thresholds": [0.0, None], "scorer": {"type": "maxprob"}}
>>> preds, exits = EarlyExitModel(net, policy)(torch.zeros(5, 4))
>>> exits.tolist()          # max-prob is always >= 0: everyone stops at exit 0
[0, 0, 0, 0, 0]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from eenet_cli.core.online import OnlinePolicy
from eenet_cli.core.policy import check_scorer
from eenet_cli.errors import InputError
from eenet_cli.runtime.batch import batch_len


@dataclass
class EarlyExitResult:
    """What :meth:`EarlyExitModel.run` decided for a batch."""

    preds: torch.Tensor  # [B] int64 prediction at the exit taken
    exits: torch.Tensor  # [B] int64 0-based exit taken
    logits: torch.Tensor  # [B, C] scores at the exit taken
    scores: torch.Tensor | None = None  # [B] float64 the policy's score at the exit taken


def gather_rows(state: Any, index: torch.Tensor, batch: int) -> Any:
    """``state`` with only the batch rows ``index`` (in that order), for a tensor or any nesting
    of tuples, lists and dicts of tensors. A tensor whose first axis is not ``batch`` long (a
    shared constant) and any non-tensor value are kept as they are."""
    if isinstance(state, torch.Tensor):
        if state.ndim == 0 or state.shape[0] != batch:
            return state
        return state.index_select(0, index if index.device == state.device else index.to(state.device))
    if isinstance(state, Mapping):
        return type(state)((k, gather_rows(v, index, batch)) for k, v in state.items()) if type(state) is not dict else {
            k: gather_rows(v, index, batch) for k, v in state.items()
        }
    if isinstance(state, tuple):
        items = [gather_rows(v, index, batch) for v in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    if isinstance(state, list):
        return [gather_rows(v, index, batch) for v in state]
    return state


def check_policy(policy: dict, num_exits: int, source: str = "policy") -> None:
    """The parts of a policy the runtime needs, with one clear line when they do not fit."""
    if not isinstance(policy, dict):
        raise InputError("expected a policy JSON object", source=source)
    if policy.get("format", "policy") != "policy":
        raise InputError(f"expected format 'policy', got {policy.get('format')!r}", source=source, field="format")
    thr = policy.get("thresholds")
    if not isinstance(thr, list) or len(thr) != num_exits:
        got = len(thr) if isinstance(thr, list) else thr
        raise InputError(f"has {got} thresholds but the model has {num_exits} exits", source=source, field="thresholds")
    if any(t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))) for t in thr):
        raise InputError("thresholds must be numbers or null", source=source, field="thresholds")
    k = policy.get("num_exits", num_exits)
    if k != num_exits:
        raise InputError(f"is for {k} exits but the model has {num_exits}", source=source, field="num_exits")
    scorer = policy.get("scorer")
    if not isinstance(scorer, dict):
        raise InputError(f"expected an object with a 'type', got {scorer!r}", source=source, field="scorer")
    check_scorer(scorer.get("type"), source=source, field="scorer")
    if scorer["type"] == "eenet" and len(scorer.get("exits", [])) != num_exits:
        raise InputError(f"EENet scorer has {len(scorer.get('exits', []))} exits, the model {num_exits}", source=source, field="scorer.exits")
    if policy.get("outputs") is not None:
        from eenet_cli.core.outputs import validate_outputs

        problem = validate_outputs(policy["outputs"], num_exits)
        if problem:
            raise InputError(problem, source=source, field="outputs")


class EarlyExitModel(nn.Module):
    """A staged multi-exit model that stops each sample where the policy says.

    ``forward(x)`` returns ``(preds, exits)``, both ``[B]`` int64; :meth:`run` also
    returns the logits and the policy's score at the exit taken. ``x`` is a tensor or a
    dict/tuple of tensors (the first stage's input, batch first). ``scores="probs"`` tells it
    the heads already output probabilities (never softmaxed twice).
    """

    def __init__(self, model: nn.Module, policy: dict, *, scores: str = "logits"):
        super().__init__()
        stages, heads = getattr(model, "stages", None), getattr(model, "heads", None)
        if stages is None or heads is None or len(stages) != len(heads) or len(stages) == 0:
            raise InputError("the runtime needs a staged model (stages and heads, K of each)")
        self.model = model
        self.num_exits = len(stages)
        check_policy(policy, self.num_exits)
        self.policy = policy
        self.online = OnlinePolicy({**policy, "num_exits": self.num_exits})
        self.probs = scores == "probs"
        self._samples: list = []  # reusable single-sample decision states

    @property
    def stages(self) -> nn.ModuleList:
        return self.model.stages  # type: ignore[return-value]

    @property
    def heads(self) -> nn.ModuleList:
        return self.model.heads  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.run(x)
        return r.preds, r.exits

    @torch.inference_mode()
    def run(self, x: Any) -> EarlyExitResult:
        b = batch_len(x)
        if b == 1:
            return self._run_one(x)
        state = self.online.begin(b)
        exits = np.full(b, -1, dtype=np.int64)
        preds = np.zeros(b, dtype=np.int64)
        scores = np.zeros(b, dtype=np.float64)
        out_logits: torch.Tensor | None = None
        rows = np.arange(b)  # batch rows still running, in batch order
        h = x
        for k in range(self.num_exits):
            h = self.stages[k](h)
            logits = self.heads[k](h)
            z = logits.float().cpu().numpy()
            stop, pred, score = self.online.step(state, k, z, rows, probs=self.probs)
            if out_logits is None:
                out_logits = torch.empty((b, logits.shape[1]), dtype=logits.dtype, device=logits.device)
            if stop.any():
                done = rows[stop]
                exits[done], preds[done] = k, pred[stop]
                scores[done] = score[stop] if k < self.num_exits - 1 else np.nan  # the last exit accepts without a score
                if stop.all():
                    out_logits[torch.from_numpy(done).to(logits.device)] = logits
                    break
                sel = torch.from_numpy(np.flatnonzero(stop)).to(logits.device)
                out_logits[torch.from_numpy(done).to(logits.device)] = logits.index_select(0, sel)
                keep = np.flatnonzero(~stop)
                h = gather_rows(h, torch.from_numpy(keep), len(rows))
                rows = rows[keep]
        assert out_logits is not None
        return EarlyExitResult(torch.from_numpy(preds), torch.from_numpy(exits), out_logits, torch.from_numpy(scores))

    def _run_one(self, x: Any) -> EarlyExitResult:
        """Batch size 1: the policy's lean single-sample path, fed exit by exit on demand,
        so nothing after the accepted exit is computed."""
        exits = _LazyExits(self, x)
        pool = self._samples
        try:
            s = pool.pop()  # atomic: concurrent callers never share a sample's buffers
            s.reset()
        except IndexError:
            s = self.online.sample(self.probs)
        step = s.step
        for j in range(self.num_exits):
            if step(exits[j]):
                break
        score = float("nan") if s.score is None or j == self.num_exits - 1 else float(s.score)
        result = EarlyExitResult(torch.tensor([s.prediction]), torch.tensor([j]), exits.last, torch.tensor([score], dtype=torch.float64))
        pool.append(s)
        return result


class _LazyExits:
    """Exit scores of one sample, computed only when the policy first asks for exit k
    (stage k and head k run then, in order): the policy reads ``exits[k]`` only if exit
    k-1 did not stop the sample."""

    def __init__(self, ee: EarlyExitModel, x: Any):
        self.ee = ee
        self.h = x
        self.rows: list[np.ndarray] = []
        self.last: torch.Tensor | None = None
        self._compute(0)
        self.shape = (ee.num_exits, self.rows[0].shape[-1])

    def _compute(self, k: int) -> None:
        while len(self.rows) <= k:
            j = len(self.rows)
            self.h = self.ee.stages[j](self.h)
            self.last = self.ee.heads[j](self.h)
            self.rows.append(self.last.float().cpu().numpy()[0])

    def __len__(self) -> int:
        return self.ee.num_exits

    def __getitem__(self, k):
        if isinstance(k, slice):
            stop = k.stop if k.stop is not None else self.ee.num_exits
            self._compute(stop - 1)
            return np.stack(self.rows[k])
        self._compute(int(k))
        return self.rows[int(k)]
