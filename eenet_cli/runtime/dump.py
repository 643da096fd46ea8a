"""Running a multi-exit model over data and streaming its exit scores to Parquet (``eenet dump``).

Batches are run one at a time and buffered only up to one row group (``row_group_rows``
samples), which is then written and dropped: memory stays flat however much data there
is. The output appears only once complete (:class:`~eenet_cli.artifacts.predictions.PredictionsWriter` is
atomic). ``append`` writes a *new* file holding the old rows and then the new ones, and
renames it over the old one: nothing is modified in place.

Two writers of one file take turns (:func:`output_lock`): ``append`` holds an exclusive
lock on ``.NAME.lock`` beside the file from reading the old rows to the rename, and a plain
write holds it for its rename, so no accepted row is lost to a concurrent ``--append``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank runs every ``WORLD_SIZE``-th batch
(batch ``i`` goes to rank ``i % WORLD_SIZE``) and writes ``OUTPUT/part-{rank:05d}.parquet``;
the folder is one predictions input. Rank 0 records the dump's parts in
``OUTPUT/.eenet-dump.json`` and removes part files of ranks ``>= WORLD_SIZE`` only when an
earlier eenet dump's manifest lists them (:func:`update_manifest`); other files are left
in place with a note. Every rank still iterates the whole loader (it skips
the other ranks' batches without running the model) so sample ids are global positions in
the data and never collide. Only ``--append`` needs the ranks to agree on where ids
continue: then a ``gloo`` process group is started (from torchrun's ``MASTER_ADDR`` /
``MASTER_PORT``) for one barrier.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eenet_cli.artifacts.predictions import ExistingPredictions
from eenet_cli.errors import EenetError, InputError, WorkFailed
from eenet_cli.runtime.batch import batch_slice, batch_to
from eenet_cli.runtime.data import DataSource
from eenet_cli.runtime.load import LoadedModel
from eenet_cli.runtime.run import run_checked, run_exits


@dataclass
class Shard:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1


def shard_from_env(env: dict | None = None) -> Shard:
    """``RANK`` / ``WORLD_SIZE`` as set by torchrun (one process when absent)."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1") or 1)
        rank = int(env.get("RANK", "0") or 0)
    except ValueError:
        raise InputError("RANK and WORLD_SIZE must be integers", source="environment") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK={rank} is outside [0, WORLD_SIZE={world})", source="environment")
    return Shard(rank, world)


def output_file(output: str, shard: Shard) -> Path:
    """Where this process writes: the file itself, or its part file in the output folder."""
    out = Path(output)
    if not shard.active:
        if out.is_dir():
            raise InputError("is a folder (of part files from a sharded dump); give a file name", source=output, field="--output")
        return out
    if out.exists() and not out.is_dir():
        raise InputError("is a file; a sharded dump (WORLD_SIZE > 1) writes a folder of part files", source=output, field="--output")
    out.mkdir(parents=True, exist_ok=True)
    return out / f"part-{shard.rank:05d}.parquet"


@dataclass
class DumpResult:
    path: Path
    rows: int  # rows written by this process (new ones)
    total_rows: int  # rows in the file, with appended-to rows
    seconds: float
    num_exits: int = 0
    num_classes: int = 0
    exit_correct: list[int] = field(default_factory=list)

    @property
    def exit_accuracy(self) -> list[float]:
        return [c / max(self.rows, 1) for c in self.exit_correct]

    @property
    def samples_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def _shared_next_id(folder: Path, shard: Shard) -> int:
    """Sharded --append: every rank reads the ids of every existing part, then waits for all."""
    from eenet_cli.artifacts.predictions import next_part_sample_id

    nxt = next_part_sample_id(folder)
    _barrier(shard)
    return nxt


def _barrier(shard: Shard) -> bool:
    """Wait for every rank; returns True when this call started the process group."""
    import torch.distributed as dist

    if not dist.is_available():
        raise InputError("a sharded --append needs torch.distributed, which this torch build lacks")
    if not dist.is_initialized():
        if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
            raise InputError(
                "a sharded --append needs MASTER_ADDR and MASTER_PORT (torchrun sets them) to synchronise ranks",
                source="environment",
            )
        dist.init_process_group("gloo", rank=shard.rank, world_size=shard.world)
        dist.barrier()
        dist.destroy_process_group()
        return True
    dist.barrier()
    return False


def parse_keep(text: str | None) -> int | None:
    """``--keep``: ``full`` (every class score; None) or ``top-k:K`` (compact predictions
    keeping K classes per exit, docs/spec.md §2.1.1; returns K)."""
    if text is None or text.strip() == "full":
        return None
    head, sep, tail = text.strip().partition(":")
    if head != "top-k" or not sep or not tail.strip().isdigit():
        raise InputError(f"expected full or top-k:K (K classes kept per exit, at least 2), got {text!r}", field="--keep")
    k = int(tail)
    if k < 2:
        raise InputError(f"top-k:{k} keeps too few classes; keep at least 2 (the top two give the margin)", field="--keep")
    return k


def dump_predictions(
    model: LoadedModel,
    data: DataSource,
    output: str,
    *,
    split: str | None,
    append: bool = False,
    fp16: bool = False,
    scores: str = "logits",
    costs: dict | None = None,
    shard: Shard | None = None,
    row_group_rows: int = 8192,
    progress=None,
    log=None,
    lock_timeout: float | None = None,
    top_k: int | None = None,
) -> DumpResult:
    """Run ``model`` over ``data`` and write its exit scores (see the module docstring).

    With ``top_k`` the file is compact (docs/spec.md §2.1.1): each row group's columns are
    computed from the buffered float32 scores by the very function ``eenet compact`` uses
    (:func:`eenet_cli.core.measures.compact_block`), so the file equals a full dump
    converted by ``eenet compact --top-k K``, value for value, and no full score is stored."""
    from eenet_cli.artifacts.predictions import (
        CompactWriter,
        PredictionsWriter,
        read_existing,
    )
    from eenet_cli.core.measures import compact_block

    shard = shard or Shard()
    if scores not in ("logits", "probs"):
        raise InputError(f"expected logits or probs, got {scores!r}", field="--scores")
    if top_k is not None and top_k < 2:
        raise InputError(f"top-k:{top_k} keeps too few classes; keep at least 2", field="--keep")
    if top_k is not None and fp16:
        raise InputError("--fp16 halves full scores; a compact file (--keep top-k:K) stores a few float32 numbers per exit, drop --fp16", field="--fp16")
    path = output_file(output, shard)
    old: ExistingPredictions | None = None
    with contextlib.ExitStack() as locks:  # --append: locked from reading the old rows to the rename
        if append:
            locks.enter_context(output_lock(path, log=log, timeout=lock_timeout))
            old = read_existing(path)
            old_kind = old.meta.get("scores", "logits")
            if old_kind != scores:
                raise InputError(f"--append: the file stores {old_kind}, this dump would add {scores} (use --scores {old_kind})", source=str(path), field="--scores")
            check_append_keep(old, top_k, path)
            if old.fp16 != fp16 and log and top_k is None:
                log(f"note: {path} stores {'float16' if old.fp16 else 'float32'} scores; the new rows follow it")
            fp16 = old.fp16
            if costs is None:
                costs = old.meta.get("costs")
            if shard.active:
                old.next_id = _shared_next_id(path.parent, shard)
        device = torch.device(model.device)
        writer: PredictionsWriter | CompactWriter | None = None
        buf_scores: list[np.ndarray] = []
        buf_labels: list[np.ndarray] = []
        buf_ids: list[np.ndarray] = []
        buffered = 0
        rows = 0
        offset = 0  # global position in the data (all ranks' batches)
        first_id = old.next_id if old else 0
        correct: np.ndarray | None = None
        k = c = 0
        elapsed = 0.0
        t_start = time.perf_counter()

        def flush() -> None:
            nonlocal buffered
            if not buffered or writer is None:
                return
            ids = np.concatenate(buf_ids)
            block, labels = np.concatenate(buf_scores), np.concatenate(buf_labels)
            if top_k is not None:
                block = compact_block(block, scores, top_k, labels)
            writer.write(
                block,
                labels,
                split=split,
                sample_id=ids.astype(str).astype(object) if old and old.string_ids else ids,
            )
            buf_scores.clear(), buf_labels.clear(), buf_ids.clear()
            buffered = 0

        try:
            with torch.inference_mode():
                for i, (x, y) in enumerate(data):
                    n = int(y.shape[0])
                    if writer is None:
                        if n == 0:
                            continue
                        x = batch_to(x, device)
                        outs = run_checked(model, batch_slice(x, slice(0, 1)), data.spec)
                        k, c = len(outs), int(outs[0].shape[1])
                        if old is not None:
                            ok, oc = old.meta.get("num_exits"), old.meta.get("num_classes")
                            if (ok, oc) != (k, c):
                                raise InputError(
                                    f"--append: the file has {ok} exits x {oc} classes, the model gives {k} x {c}",
                                    source=str(path),
                                )
                        if costs is not None and len(costs.get("costs", [])) != k:
                            raise InputError(f"the costs have {len(costs.get('costs', []))} exits but the model gives {k}", field="--costs")
                        spec = model.spec if old is None else old.meta.get("model", model.spec)
                        if top_k is not None:
                            if top_k > c:
                                raise InputError(f"top-k:{top_k} keeps more classes than the model has ({c})", field="--keep")
                            writer = CompactWriter(path, num_exits=k, num_classes=c, top_k=top_k, scores=scores, costs=costs,
                                                   model=spec, sample_id_type=_id_type(old), with_split=split is not None)
                        else:
                            writer = PredictionsWriter(
                                path,
                                num_exits=k,
                                num_classes=c,
                                scores=scores,
                                fp16=fp16,
                                costs=costs,
                                model=spec,
                                sample_id_type=_id_type(old),
                                with_split=split is not None,
                            )
                        if old is not None:
                            writer.append_from(path)
                        correct = np.zeros(k, dtype=np.int64)
                    mine = not shard.active or i % shard.world == shard.rank
                    if mine and n:
                        t0 = time.perf_counter()
                        outs = run_exits(model, batch_to(x, device))
                        if len(outs) != k:
                            raise InputError(f"batch {i}: the model gave {len(outs)} exits, earlier batches {k}", source=model.spec)
                        s = torch.stack([o.float() for o in outs], dim=1)
                        if s.shape != (n, k, c):
                            raise InputError(f"batch {i}: exit scores have shape {list(s.shape)}, expected [{n}, {k}, {c}]", source=model.spec)
                        if scores == "probs":
                            s = torch.softmax(s, dim=-1)
                        arr = s.cpu().numpy()
                        elapsed += time.perf_counter() - t0
                        lab = y.cpu().numpy().astype(np.int64)
                        bad = (lab < 0) | (lab >= c)
                        if bad.any():
                            j = int(np.argmax(bad))
                            raise InputError(f"batch {i}: label {lab[j]} is outside [0, {c}) for a model with {c} classes", source=data.spec, field="y")
                        if not np.isfinite(arr).all():
                            raise InputError(f"batch {i}: the model gave non-finite scores (NaN or inf)", source=model.spec)
                        correct += (arr.argmax(axis=-1) == lab[:, None]).sum(axis=0)
                        buf_scores.append(arr)
                        buf_labels.append(lab)
                        buf_ids.append(np.arange(first_id + offset, first_id + offset + n, dtype=np.int64))
                        buffered += n
                        rows += n
                        if buffered >= row_group_rows:
                            flush()
                        if progress is not None:
                            rate = rows / max(time.perf_counter() - t_start, 1e-9)
                            progress(n, rate=rate)
                    offset += n
            if writer is None:
                raise InputError("holds no samples", source=data.spec, field="--data")
            flush()
            if not append and _lockable(path):  # a plain write replaces the file only between other writers' renames
                locks.enter_context(output_lock(path, log=log, timeout=lock_timeout))
            writer.close()
        except BaseException as e:
            if writer is not None:
                writer.abort(e)
            raise
    total = rows + (old.rows if old else 0)
    if shard.active and shard.rank == 0:
        update_manifest(path.parent, shard.world, append=append, log=log)
    return DumpResult(path, rows, total, elapsed, k, c, correct.tolist() if correct is not None else [])


# --------------------------------------------------------------------------- locking


LOCK_NOTE_AFTER_S = 1.0  # say that we wait for another writer after this long


def lock_file(target: Path) -> Path:
    """``.NAME.lock`` beside the file ``target`` names (a link's target: where the rename lands;
    hidden, so a folder of part files reads back without it)."""
    real = Path(os.path.realpath(target))
    return real.parent / f".{real.name}.lock"


def _lockable(target: Path) -> bool:
    """Regular files (or names not yet taken) are locked; devices and FIFOs are written directly."""
    try:
        return not target.exists() or target.is_file()
    except OSError:
        return False


@contextlib.contextmanager
def output_lock(target: Path, *, log=None, timeout: float | None = None):
    """Hold an exclusive ``fcntl.flock`` on :func:`lock_file` of ``target``.

    ``--append`` holds it from reading the old rows to renaming the new file over the old
    one, and a plain write holds it for its rename, so two writers of one file take turns
    and no accepted row is lost. A second writer waits (saying so on stderr after a
    second), without limit unless ``timeout`` seconds are given (then :class:`WorkFailed`).
    The kernel drops the lock when its holder dies, so a killed dump never blocks another.
    The lock file is removed while still locked; a waiter that then gets the lock on the
    removed file notices (the name no longer leads to its file) and locks afresh. Where
    ``fcntl`` is missing (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = lock_file(target)
    started = time.monotonic()
    noted = False
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise InputError(f"cannot create the lock file {lock.name} beside it ({e.strerror or e})", source=str(target), field="--output") from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waited = time.monotonic() - started
                    if timeout is not None and waited >= timeout:
                        raise WorkFailed(
                            f"another eenet dump has been writing it for over {timeout:g} s (lock {lock.name}); try again when it is done",
                            source=str(target),
                        ) from None
                    if not noted and waited >= LOCK_NOTE_AFTER_S and log:
                        log(f"waiting for another eenet dump to finish writing {target} (lock {lock.name})")
                        noted = True
                    time.sleep(0.05)
            try:
                st = os.stat(lock, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            mine = os.fstat(fd)
            if st is not None and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                break  # the lock file under its name is the one we hold
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder removed it as we waited: lock the current one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # still holding it: a waiter on this file retries on the new one
        os.close(fd)


# --------------------------------------------------------------------------- part files of a sharded dump


MANIFEST = ".eenet-dump.json"  # which part files eenet dumps wrote into a folder


def part_name(rank: int) -> str:
    return f"part-{rank:05d}.parquet"


def read_manifest(folder: Path, log=None) -> set[str]:
    """The part files an earlier eenet dump recorded in ``folder/.eenet-dump.json`` (empty if none)."""
    from eenet_cli.artifacts.predictions import read_dump_manifest

    p = folder / MANIFEST
    try:
        if p.is_symlink() or not p.is_file() or p.stat().st_size > 1 << 20:
            return set()
        doc = read_dump_manifest(p)
    except (OSError, ValueError, UnicodeDecodeError):
        doc = None
    parts = doc.get("parts") if isinstance(doc, dict) and doc.get("format") == "eenet-dump-parts" else None
    if not isinstance(parts, list) or not all(isinstance(n, str) for n in parts):
        if log:
            log(f"note: {p} is not a readable eenet dump manifest; no part file is removed on its word")
        return set()
    return {n for n in parts if _PART.fullmatch(n)}


def update_manifest(folder: Path, world: int, *, append: bool, log=None) -> list[str]:
    """Rank 0, after its part: record this dump's parts, remove the stale ones an earlier dump recorded.

    A part file ``part-NNNNN.parquet`` with ``NNNNN >= world`` is not written by this dump;
    the folder would read back with its rows. It is removed only when the manifest of an
    earlier eenet dump into this folder lists it (a file eenet wrote, left by a dump with
    more ranks); any other ``.parquet`` file is left in place with a note on stderr. Each
    removal is reported through ``log``. With ``append`` nothing is removed (the earlier
    parts hold rows this dump adds to) and the manifest keeps them.
    """
    from eenet_cli.artifacts.predictions import write_dump_manifest

    recorded = read_manifest(folder, log)
    mine = {part_name(r) for r in range(world)}
    removed: list[str] = []
    kept: list[str] = []
    for p in sorted(folder.glob("*.parquet")):
        if p.name in mine or p.name.startswith("."):
            continue
        m = _PART.fullmatch(p.name)
        if not append and m and int(m.group(1)) >= world and p.name in recorded and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                if log:
                    log(f"could not remove {p} ({e.strerror or e}), a part file of an earlier eenet dump; the folder reads back with its rows")
                kept.append(p.name)
                continue
            removed.append(p.name)
            if log:
                log(f"removed {p}: an earlier eenet dump with more ranks wrote it (listed in {MANIFEST}); this {world}-rank dump does not")
        else:
            kept.append(p.name)
    others = [n for n in kept if not (append and n in recorded)]
    if others and log:
        shown = ", ".join(others[:5]) + (f" (+{len(others) - 5} more)" if len(others) > 5 else "")
        log(
            f"note: {folder} also holds {shown}, which this dump did not write and no eenet dump manifest lists; "
            "left in place, so the folder reads back with their rows"
        )
    listed = sorted(mine | ({n for n in recorded if (folder / n).is_file()} if append else set()))
    doc = {"format": "eenet-dump-parts", "version": 1, "world": world, "parts": listed}
    try:
        write_dump_manifest(folder / MANIFEST, doc)
    except (OSError, EenetError) as e:
        if log:
            log(f"note: could not write {folder / MANIFEST} ({e}); a later, narrower dump will not remove this dump's parts")
    return removed


_PART = re.compile(r"part-([0-9]{5,})\.parquet")


def remove_stale_parts(folder: Path, world: int, log=None) -> list[str]:
    """Kept for callers of earlier releases: :func:`update_manifest` without appending."""
    return update_manifest(folder, world, append=False, log=log)


def _id_type(old: ExistingPredictions | None):
    import pyarrow as pa

    return pa.string() if old is not None and old.string_ids else pa.int64()


def check_append_keep(old: ExistingPredictions, top_k: int | None, path: Path) -> None:
    """``--append`` never mixes compact and full rows, nor two top-k sizes: one line if it would."""
    if old.compact and top_k is None:
        raise InputError(f"--append: the file holds compact predictions (top {old.top_k} per exit); add --keep top-k:{old.top_k} to append to it", source=str(path), field="--keep")
    if top_k is not None and not old.compact:
        raise InputError("--append: the file holds full scores; drop --keep to append to it, or write a new file", source=str(path), field="--keep")
    if top_k is not None and old.top_k != top_k:
        raise InputError(f"--append: the file keeps the top {old.top_k} classes per exit, this dump would keep {top_k} (use --keep top-k:{old.top_k})", source=str(path), field="--keep")
