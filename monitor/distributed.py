"""Collectives for the global batch under ``torch.distributed``.

A collective that one rank skips hangs the others (NCCL) or aborts them (gloo), so everything here keeps three
rules:

* every rank reaches every collective, in the same order, whatever its local data: no rows, no tap, NaN rows, a
  capture that failed;
* how many collectives run, and with which shapes, depends only on what every rank knows (the gathered metadata,
  the communication device), never on local data;
* local work that can fail (moving rows to the communication device, allocating the padded buffers) is done
  *between* collectives, and its outcome is agreed on before the next data collective: a failure on one rank
  becomes the same exception on every rank, not a rank missing from a collective.

Per-rank row counts may differ (including zero rows): rows are padded to the largest count before ``all_gather``
and the padding is dropped afterwards. With ``max_rows`` the gathered batch is bounded: each rank contributes a
random subset of its rows, in proportion to its count.

Example:
    >>> from spherewatch import distributed
    >>> distributed.is_distributed()  # no process group in this process
    False
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from spherewatch.errors import SpherewatchError

__all__ = ["HANDSHAKE_TIMEOUT_S", "any_true", "gather_rows", "handshake", "is_distributed", "rank", "union_names",
           "world_size"]

#: Seconds a rank waits at its first evaluation for every other rank to show its Monitor (see :func:`handshake`):
#: far below the collective timeouts (30 min gloo, 10 min NCCL) a mismatch would otherwise run into.
HANDSHAKE_TIMEOUT_S = 120.0

Rows = Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group with more than one rank is initialised."""
    return _initialized() and world_size() > 1


def rank() -> int:
    """This process's rank: from the process group, else the ``RANK`` environment variable (set by ``torchrun``
    and Lightning before the group exists), else 0."""
    if _initialized():
        return torch.distributed.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def world_size() -> int:
    """Number of ranks in the default process group (1 without one)."""
    if _initialized():
        return torch.distributed.get_world_size()
    return 1


def _comm_device() -> torch.device:
    """The device every rank uses for the collectives here, chosen from the process group only (never from the
    local rows: a rank without rows must pick the same device as the others)."""
    backend = str(torch.distributed.get_backend()).lower()
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    try:  # another accelerator's backend (xpu, hpu, npu, ...): the device type the group registered
        kind = torch.distributed.distributed_c10d._get_object_coll_device()
    except Exception:  # pragma: no cover - private API moved
        kind = "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    module = getattr(torch, kind, None)
    index = module.current_device() if module is not None and hasattr(module, "current_device") else 0
    return torch.device(kind, index)


def _default_store() -> Any:
    try:  # the key-value store the default process group was set up with (TCPStore, FileStore, ...)
        return torch.distributed.distributed_c10d._get_default_store()
    except Exception:  # pragma: no cover - private API moved: no handshake, as before it existed
        return None


def handshake(fingerprint: Mapping[str, Any], *, timeout: Optional[float] = None) -> Optional[str]:
    """Check, before the first collective of a Monitor, that every rank runs one with the same ``fingerprint``
    (its schedule-relevant configuration and the step it is at). ``None`` when they agree, else one sentence that
    names the ranks and what differs -- the same sentence on every rank that can tell.

    A rank without a Monitor (created on rank zero only), or on another schedule, or whose step counter is off,
    would reach the Monitor's collectives at another time than the others: the job would hang for the whole
    collective timeout and die naming nothing. This check uses the process group's key-value store, not a
    collective: each rank writes its fingerprint, then waits at most ``timeout`` seconds
    (:data:`HANDSHAKE_TIMEOUT_S`) for the others', so a rank that never comes is named instead of waited for.
    The n-th Monitor of a rank meets the n-th Monitor of every other rank.
    """
    store = _default_store()
    if store is None:
        return None
    me, n = rank(), world_size()
    count = store.add(f"spherewatch/handshake/count/{me}", 1)
    keys = [f"spherewatch/handshake/{count}/{r}" for r in range(n)]
    store.set(keys[me], json.dumps(dict(fingerprint), sort_keys=True, default=str))
    wait = HANDSHAKE_TIMEOUT_S if timeout is None else timeout
    try:
        store.wait(keys, datetime.timedelta(seconds=wait))
    except Exception:  # noqa: BLE001 - a store timeout (DistStoreError / RuntimeError, by torch version)
        missing = [r for r in range(n) if not store.check([keys[r]])]
        return (f"rank(s) {missing} did not reach the first evaluation of a spherewatch Monitor within {wait:g} s "
                f"of rank {me} (at step {fingerprint.get('step')}): create the Monitor on every rank, with the same "
                "schedule (every_n_steps, start_step, ...), and pass every rank the same global step")
    seen: Dict[int, Dict[str, Any]] = {r: json.loads(store.get(keys[r])) for r in range(n)}
    differ = {r: sorted(f for f in set(fp) | set(seen[0]) if fp.get(f) != seen[0].get(f)) for r, fp in seen.items()}
    differ = {r: fields for r, fields in differ.items() if fields}
    if not differ:
        return None
    parts = [f"rank {r} has " + ", ".join(f"{f}={seen[r].get(f)!r}" for f in fields) + " where rank 0 has "
             + ", ".join(f"{f}={seen[0].get(f)!r}" for f in fields) for r, fields in sorted(differ.items())]
    return ("the ranks' spherewatch Monitors disagree (" + "; ".join(parts) + "): every rank needs the same schedule "
            "and the same global step, or the Monitor's collectives would meet at different times")


def union_names(names: Sequence[str]) -> List[str]:
    """Sorted union of ``names`` over all ranks, so that every rank loops over the same taps in the same order.

    One collective (``all_gather_object``); every rank must call it.
    """
    gathered: List[Optional[List[str]]] = [None] * world_size()
    torch.distributed.all_gather_object(gathered, sorted(str(n) for n in names))
    return sorted({n for part in gathered for n in (part or [])})


def any_true(flag: bool) -> bool:
    """OR of a boolean over all ranks (e.g. "a stop rule fired here"): the same answer on every rank.

    One collective (``all_reduce``); every rank must call it.
    """
    t = torch.tensor([1 if flag else 0], dtype=torch.long, device=_comm_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _prepare(rows: Rows, device: torch.device) -> Rows:
    """Check the local rows and move them to the communication device (fp32 rows, int64 labels)."""
    z, z_pos, labels = rows
    if z is None:
        return None, None, None
    if not isinstance(z, torch.Tensor) or z.ndim != 2:
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"Expected the rows `z` to be a 2-D tensor (N, D), got {got}.")
    if z.shape[0] == 0:
        return None, None, None
    pos_ok = isinstance(z_pos, torch.Tensor) and (
        tuple(z_pos.shape) == tuple(z.shape)
        or (z_pos.ndim == 3 and z_pos.shape[0] == z.shape[0] and z_pos.shape[2] == z.shape[1]))
    if z_pos is not None and not pos_ok:
        got = tuple(z_pos.shape) if isinstance(z_pos, torch.Tensor) else type(z_pos).__name__
        raise ValueError(f"Expected `z_pos` to match `z` {tuple(z.shape)} (or the other views, "
                         f"({z.shape[0]}, V-1, {z.shape[1]})), got {got}.")
    if labels is not None and (not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (z.shape[0],)):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"Expected `labels` of shape ({z.shape[0]},), got {got}.")
    return (
        z.detach().to(device, torch.float32),
        None if z_pos is None else z_pos.detach().to(device, torch.float32),
        None if labels is None else labels.detach().to(device, torch.long),
    )


def _quotas(counts: Sequence[int], max_rows: Optional[int]) -> List[int]:
    """Rows each rank contributes: all of them, or a share of ``max_rows`` proportional to its count (largest
    remainder, ties to the lower rank). Computed from the gathered counts, so every rank agrees."""
    total = sum(counts)
    if max_rows is None or total <= max_rows:
        return list(counts)
    quotas = [c * max_rows // total for c in counts]
    remainders = [c * max_rows % total for c in counts]
    order = sorted(range(len(counts)), key=lambda r: (-remainders[r], r))
    for r in order[: max_rows - sum(quotas)]:
        quotas[r] += 1
    return quotas


def gather_rows(rows: Rows, *, max_rows: Optional[int] = None, seed: int = 0) -> Rows:
    """All-gather ``(z, z_pos, labels)`` from every rank: the global batch, the same on every rank.

    Every rank must call it, also with ``(None, None, None)`` (no rows, no such tap). Row counts may differ
    between ranks: rows are padded to the largest count for the collectives and the padding is dropped. The
    result is the concatenation in rank order, fp32 rows and int64 labels, on the local rows' device (the
    communication device on a rank without rows); ``(None, None, None)`` when no rank has a row. ``z_pos``
    (``labels``) is gathered only when every rank that has rows has it, else ``None``.

    Args:
        rows: this rank's ``(z (N, D), z_pos (N, D), (N, V - 1, D) or None, labels (N,) or None)``; ``N``
            may be 0. With other views, ranks that hold different numbers of them contribute the fewest.
        max_rows: bound on the gathered rows (memory and the O(N^2) pairwise metrics). When the ranks hold
            more, each contributes a uniform random subset of its rows, of a size proportional to its count.
            ``None``: no bound.
        seed: seed of that subset (vary it between calls; the rank is mixed in).

    Returns:
        ``(z, z_pos, labels)`` of the global batch.

    Raises:
        ValueError: on every rank, when ranks hold rows of different widths ``D`` for the same tap.
        SpherewatchError: on every rank, when a rank could not allocate its buffers (e.g. out of memory; no data
            collective ran). Only on the rank concerned, after every collective, when its own rows were unusable
            (it then contributed no rows to the others).
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"Expected `max_rows` >= 1 or None, got {max_rows}.")
    world, me = world_size(), rank()
    dev = _comm_device()
    local_device = rows[0].device if isinstance(rows[0], torch.Tensor) else dev
    local_error: Optional[BaseException] = None
    try:
        z, z_pos, labels = _prepare(rows, dev)
    except Exception as exc:  # contribute no rows, raise once every collective was reached
        local_error = exc
        z = z_pos = labels = None

    # collective 1: what every rank holds
    n = 0 if z is None else int(z.shape[0])
    d = 0 if z is None else int(z.shape[1])
    # the other views: (N, D) for a paired view, (N, V - 1, D) for more; gathered flat, (N, (V - 1) * D)
    others = 0 if z_pos is None else (int(z_pos.shape[1]) if z_pos.ndim == 3 else 1)
    meta = torch.tensor([n, d, others, int(labels is not None)], dtype=torch.long, device=dev)
    metas = [torch.zeros_like(meta) for _ in range(world)]
    torch.distributed.all_gather(metas, meta)
    info = torch.stack(metas).cpu().tolist()
    holders = [i for i in info if i[0] > 0]
    if not holders:
        _raise_local(local_error, me)
        return None, None, None
    widths = {i[1] for i in holders}
    if len(widths) != 1:
        per_rank = {r: i[1] for r, i in enumerate(info) if i[0] > 0}
        raise ValueError(
            f"Ranks hold embeddings of different widths for the same tap (rank: D = {per_rank}); every rank must "
            "hand over rows of one width per tap (use a separate tap for each width)."
        )
    width = widths.pop()
    n_pos = min(i[2] for i in holders)  # a view that some rank lacks is dropped everywhere
    has_pos = n_pos > 0
    has_labels = all(i[3] for i in holders)
    quotas = _quotas([i[0] for i in info], max_rows)
    max_q = max(quotas)
    cols = width * (1 + n_pos)

    # local work that can fail (allocation, sub-sampling): agree on its outcome before the data collectives
    prep_error: Optional[BaseException] = None
    try:
        send = torch.zeros(max_q, cols, dtype=torch.float32, device=dev)
        recv = [torch.empty_like(send) for _ in range(world)]
        lsend = torch.zeros(max_q, dtype=torch.long, device=dev) if has_labels else None
        lrecv = [torch.empty_like(lsend) for _ in range(world)] if has_labels else []
        q = quotas[me]
        if has_pos and z_pos is not None:
            z_pos = (z_pos.unsqueeze(1) if z_pos.ndim == 2 else z_pos)[:, :n_pos].reshape(n, n_pos * width)
        if q:
            idx = None
            if q < n:
                gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + me) % (2**63))
                idx = torch.randperm(n, generator=gen)[:q].sort().values.to(dev)
            send[:q, :width].copy_(z if idx is None else z.index_select(0, idx))
            if has_pos:
                send[:q, width:].copy_(z_pos if idx is None else z_pos.index_select(0, idx))
            if has_labels:
                lsend[:q].copy_(labels if idx is None else labels.index_select(0, idx))
    except Exception as exc:  # e.g. out of memory: every rank must learn of it
        prep_error = exc
    # collective 2: did every rank get its buffers ready?
    status = torch.zeros(world, dtype=torch.long, device=dev)
    status[me] = int(prep_error is not None)
    torch.distributed.all_reduce(status)
    failed = [r for r, f in enumerate(status.cpu().tolist()) if f]
    if failed:
        why = f" here: {type(prep_error).__name__}: {prep_error}" if prep_error is not None else ""
        raise SpherewatchError(
            f"Gathering embedding rows failed on rank(s) {failed}{why}; every rank skipped this gather."
        ) from prep_error

    # collectives 3 (and 4): the rows (and labels)
    torch.distributed.all_gather(recv, send)
    if has_labels:
        torch.distributed.all_gather(lrecv, lsend)
    flat = torch.cat([part[:q] for part, q in zip(recv, quotas)])
    out_z = flat[:, :width].contiguous().to(local_device)
    out_pos = None
    if has_pos:
        out_pos = flat[:, width:].contiguous().to(local_device)
        out_pos = out_pos if n_pos == 1 else out_pos.reshape(-1, n_pos, width)
    out_labels = torch.cat([part[:q] for part, q in zip(lrecv, quotas)]).to(local_device) if has_labels else None
    _raise_local(local_error, me)
    return out_z, out_pos, out_labels


def _raise_local(error: Optional[BaseException], me: int) -> None:
    if error is not None:
        raise SpherewatchError(
            f"Rank {me} could not hand its rows over ({type(error).__name__}: {error}); the other ranks' rows "
            "were gathered without them."
        ) from error
