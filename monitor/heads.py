"""Head taps (issue 18): the assignment head of DINO / iBOT / SwAV / MSN, watched beside the embeddings.

A head tap takes ``(B, K)`` teacher (and optionally student) logits or probabilities on the Monitor's capture steps
(:meth:`Monitor.observe_head <spherewatch.Monitor.observe_head>`, or ``Monitor.watch(head, kind="head")``) and keeps
only their **additive statistics** (:func:`spherewatch.metrics.head.head_stats`: row count, sum of the assignments,
sum of the per-row entropies, argmax counts, sum of the per-row KLs) -- ``O(K)`` memory whatever the batch, never
the rows. At an evaluation the statistics of the window are summed across ranks with one ``all_reduce`` (the head
taps' names and ``K`` travel with the embedding taps' names in the evaluator's one ``union_names``; no collective at
all when no rank has a head tap) and the metrics are read from them
(:func:`~spherewatch.metrics.head.head_values`), logged as ``<prefix>/<tap>/<metric>`` (tap ``head`` by default:
``spherewatch/head/usage_entropy``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from spherewatch import distributed as dist_utils
from spherewatch.errors import SpherewatchError
from spherewatch.metrics.head import head_stats, head_values, merge_head_stats

__all__ = ["HeadTaps", "DEFAULT_HEAD_TAP", "Temperature"]

#: The tap name of a head when none is given.
DEFAULT_HEAD_TAP = "head"
#: A temperature: a number, or a callable returning the current one (a warm-up schedule).
Temperature = Union[float, Callable[[], float]]

#: How a head tap's descriptor starts (a ``"\0"`` name is never a tap: see ``Evaluator.evaluate``'s ``extra_names``).
_DESCRIPTOR = "\0head\0"
_ORDER = ("rows", "nonfinite_rows", "entropy_sum", "kl_sum", "kl_rows")


def _temp(t: Temperature) -> float:
    value = float(t() if callable(t) else t)
    if not value > 0:
        raise ValueError(f"Expected a temperature > 0, got {value}.")
    return value


def select_logits(output: Any, select: Any = None) -> torch.Tensor:
    """The ``(B, K)`` logits in a head module's output: the tensor itself, ``select`` (a key, an index or a
    callable), element 0 of a tuple, or ``logits`` of a dict / ``ModelOutput``."""
    if callable(select):
        out = select(output)
    elif select is not None:
        out = output[select]
    elif isinstance(output, torch.Tensor):
        out = output
    elif isinstance(output, Mapping) or hasattr(output, "keys"):
        out = output["logits"] if "logits" in output else next(iter(output.values()))
    elif isinstance(output, (tuple, list)) and output:
        out = output[0]
    else:
        out = output
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"Expected the head's output to hold a (B, K) tensor of logits, got {type(out).__name__}.")
    return out


class HeadTaps:
    """The head taps of one Monitor: per-tap statistics of the current window.

    Args:
        config: the Monitor's config.
        faults: where failures are reported (once per tap).
        armed: whether this is a capture step (the Monitor's schedule).
        first_this_step: ``first_this_step(name)``, whether a batch of ``name`` may be taken now (the first of the
            step, or any with ``every_micro_batch``): the sampler's, asked under ``"\0head\0<tap>"``.
    """

    def __init__(self, config: Any, faults: Any, armed: Callable[[], bool],
                 first_this_step: Callable[[str], bool]) -> None:
        self.config = config
        self._faults = faults
        self._armed = armed
        self._first_this_step = first_this_step
        self.closed = False
        self._stats: Dict[str, Dict[str, torch.Tensor]] = {}
        self.captures: Dict[str, int] = {}

    def add(self, tap: str, teacher: Any, student: Any = None, *, teacher_temp: Temperature = 1.0,
            student_temp: Temperature = 1.0, probs: bool = False, center: Any = None) -> None:
        """Take one batch of ``tap`` on a capture step (at most one per step unless ``every_micro_batch``)."""
        if self.closed or not self._armed():
            return
        if not self._first_this_step(_DESCRIPTOR + tap):
            return
        try:
            if teacher is None:
                raise SpherewatchError("observe_head() got no teacher output (teacher=None): pass the teacher's "
                                       "(B, K) logits or probabilities.")
            with torch.no_grad():
                stats = head_stats(teacher, student, teacher_temp=_temp(teacher_temp),
                                   student_temp=_temp(student_temp), probs=probs, center=center)
                self._stats[tap] = merge_head_stats(self._stats.get(tap), stats)
            self.captures[tap] = self.captures.get(tap, 0) + 1
            self._faults.recovered(f"capture:{tap}")
        except Exception as exc:
            self._faults.report(f"capture:{tap}", exc, "this batch was not recorded")

    def clear(self) -> None:
        self._stats.clear()

    def taps(self) -> List[str]:
        return sorted(self.captures)

    def descriptors(self) -> List[str]:
        """What every rank must know of this rank's head taps: ``"\0head\0<tap>\0<K>\0<has KL>"`` per tap with
        statistics in the window (gathered by the evaluator with the taps' names, see :meth:`evaluate`)."""
        return [f"{_DESCRIPTOR}{tap}\0{int(s['prob_sum'].shape[0])}\0{int('kl_sum' in s)}"
                for tap, s in sorted(self._stats.items())]

    def evaluate(self, keys: Any, union: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """The head metrics of the window, keyed by ``keys.key(metric, tap)`` (0-d tensors), and clear it. Under
        ``torch.distributed`` every rank must call it at the same evaluation with ``union``, the union over all ranks
        of :meth:`descriptors` (``None`` when gathering it failed: nothing is logged); one ``all_reduce`` when a rank
        has a head tap, none otherwise."""
        stats, self._stats = self._stats, {}
        if dist_utils.is_distributed():
            stats = self._reduce(stats, union or ()) if union is not None else {}
        out: Dict[str, torch.Tensor] = {}
        for tap in sorted(stats):
            try:  # a window whose rows were all non-finite reads NaN (the nonfinite rule's business)
                for name, value in head_values(stats[tap]).items():
                    out[keys.key(name, tap)] = value
                self._faults.recovered(f"metrics:{tap}")
            except Exception as exc:
                self._faults.report(f"metrics:{tap}", exc, "its head metrics were skipped at this step")
        return out

    def _reduce(self, stats: Mapping[str, Dict[str, torch.Tensor]],
                union: Sequence[str]) -> Dict[str, Dict[str, torch.Tensor]]:
        """Sum every rank's statistics: one ``all_reduce`` of all taps' statistics in one flat fp64 vector
        (``5 + 2K`` numbers per tap), shaped from ``union`` (every rank's :meth:`descriptors`). Never the rows."""
        shapes: Dict[str, set] = {}
        kl: Dict[str, bool] = {}
        for name in union:
            if not name.startswith(_DESCRIPTOR):
                continue
            tap, k, has_kl = name[len(_DESCRIPTOR):].split("\0")
            shapes.setdefault(tap, set()).add(int(k))
            kl[tap] = kl.get(tap, True) and has_kl == "1"
        ok = []
        for tap in sorted(shapes):
            if len(shapes[tap]) != 1:  # the same decision on every rank (from the gathered shapes)
                self._faults.report(f"metrics:{tap}", ValueError(
                    f"ranks hold heads with different numbers of prototypes K {sorted(shapes[tap])} for tap {tap!r}"),
                    "its head metrics were skipped at this step")
                continue
            ok.append(tap)
        if not ok:
            return {}
        dev = dist_utils._comm_device()
        parts = []
        for tap in ok:
            k = next(iter(shapes[tap]))
            s = stats.get(tap)
            head = torch.zeros(len(_ORDER), dtype=torch.float64, device=dev)
            vecs = torch.zeros(2, k, dtype=torch.float64, device=dev)
            if s is not None:
                head = torch.stack([s[n].detach().to(dev, torch.float64) if n in s
                                    else torch.zeros((), dtype=torch.float64, device=dev) for n in _ORDER])
                vecs = torch.stack([s["prob_sum"].detach().to(dev, torch.float64),
                                    s["argmax_count"].detach().to(dev, torch.float64)])
            parts += [head, vecs.flatten()]
        flat = torch.cat(parts)
        try:
            torch.distributed.all_reduce(flat)
        except Exception as exc:
            self._faults.report("distributed", exc, "the head metrics were skipped at this step")
            return {}
        out: Dict[str, Dict[str, torch.Tensor]] = {}
        i = 0
        for tap in ok:
            k = next(iter(shapes[tap]))
            head = flat[i:i + len(_ORDER)]
            i += len(_ORDER)
            vecs = flat[i:i + 2 * k].view(2, k)
            i += 2 * k
            local = next(iter(stats.values()))["rows"].device if stats else dev
            s = {n: head[j].float().to(local) for j, n in enumerate(_ORDER)}
            if not kl[tap]:
                s.pop("kl_sum")
                s.pop("kl_rows")
            s["prob_sum"] = vecs[0].float().to(local)
            s["argmax_count"] = vecs[1].float().to(local)
            out[tap] = s
        return out
