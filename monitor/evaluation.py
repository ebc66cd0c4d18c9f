"""One evaluation: the rows of every tap (gathered across ranks) -> the metrics -> one readback to the host."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from spherewatch import distributed as dist_utils
from spherewatch.compute import compute_tap_metrics
from spherewatch.errors import SpherewatchError

__all__ = ["Evaluator", "readback"]

Rows = Tuple[Any, Any, Any]


def readback(tensors: Mapping[str, torch.Tensor], hists: Mapping[str, torch.Tensor]):
    """``(values, hist_values)`` as Python floats: one device-to-host copy per device for every value."""
    by_device: Dict[torch.device, List[str]] = defaultdict(list)
    for k, v in tensors.items():
        by_device[v.device].append(k)
    for k, v in hists.items():
        by_device[v.device].append(k)
    values: Dict[str, float] = {}
    hist_values: Dict[str, List[float]] = {}
    for keys in by_device.values():
        parts = [(tensors[k] if k in tensors else hists[k]).detach().float().reshape(-1) for k in keys]
        flat = torch.cat(parts).cpu().tolist()
        i = 0
        for k, p in zip(keys, parts):
            n = p.numel()
            if k in tensors:
                values[k] = flat[i]
            else:
                hist_values[k] = flat[i : i + n]
            i += n
    return values, hist_values


class Evaluator:
    """Computes the configured metrics of each tap's rows and reads them back once.

    Under ``torch.distributed`` every rank calls :meth:`evaluate` at the same step (the schedule depends on the
    step alone); the taps are united and the rows gathered across ranks, with the same collectives on every rank
    whatever its local rows.
    """

    def __init__(self, config: Any, faults: Any) -> None:
        self.config = config
        self._faults = faults
        #: whether any tap had usable rows at the latest evaluation
        self.had_rows = False
        #: the union over all ranks of the latest evaluation's ``extra_names`` (``None``: its collective failed)
        self.extra_union: Optional[List[str]] = []
        self._agreed: Optional[bool] = None  # the ranks' handshake at the first evaluation under DDP

    def agree(self, fingerprint: Mapping[str, Any]) -> bool:
        """Whether this rank may take part in the evaluations' collectives. At the first evaluation under
        ``torch.distributed`` the ranks compare ``fingerprint`` (:func:`~spherewatch.distributed.handshake`); when a
        rank has no Monitor, another schedule or another step, the Monitor reports it once (raises under ``strict``)
        and stays off on this rank for the rest of the run -- no metrics, no collective -- instead of hanging the
        job until the collective timeout."""
        if self._agreed is None:
            if not dist_utils.is_distributed():
                return True
            try:
                problem = dist_utils.handshake(fingerprint)
            except Exception as exc:  # noqa: BLE001 - the store failed: say so, and do not risk a hang
                problem = f"the ranks' handshake failed ({type(exc).__name__}: {exc})"
            self._agreed = problem is None
            if problem is not None:
                self._faults.report("distributed", SpherewatchError(problem),
                                    "spherewatch is off on this rank for the rest of the run (no metrics, no "
                                    "collectives); training continues")
        return self._agreed

    def evaluate(self, rows_by_tap: Mapping[str, Rows], *, spectral: bool, seed: int, extra_names: Sequence[str] = ()):
        """``(values, hist_values)`` keyed by :attr:`MonitorConfig.keys` (``<prefix>/<metric>`` for the default tap,
        ``<prefix>/<tap>/<metric>`` for others); empty when no tap had usable rows.

        ``extra_names`` (each starting with ``"\0"``, so never a tap) ride along with the taps' names in the one
        ``union_names`` collective; their union over all ranks is left in :attr:`extra_union` (``None`` when that
        collective failed) -- how the head taps agree on their shapes without a collective of their own."""
        cfg = self.config
        keys = cfg.keys
        distributed = dist_utils.is_distributed()
        taps = list(rows_by_tap)
        self.extra_union = sorted(extra_names)
        if distributed:
            try:
                names = dist_utils.union_names([*taps, *extra_names])
            except Exception as exc:
                self.extra_union = None
                self._faults.report("distributed", exc, "this evaluation was skipped")
                return {}, {}
            taps = [n for n in names if not n.startswith("\0")]
            self.extra_union = [n for n in names if n.startswith("\0")]
        self.had_rows = False
        tensors: Dict[str, torch.Tensor] = {}
        hists: Dict[str, torch.Tensor] = {}
        for tap in taps:
            rows = rows_by_tap.get(tap, (None, None, None))
            if distributed:
                try:
                    rows = dist_utils.gather_rows(rows, max_rows=cfg.max_samples, seed=seed)
                except Exception as exc:
                    self._faults.report("distributed", exc, "this tap was skipped at this step")
                    rows = (None, None, None)
            z, z_pos, labels = rows
            if z is None:
                continue
            self.had_rows = True
            fallbacks: List[BaseException] = []
            failures: Dict[str, BaseException] = {}
            try:
                sc, hi = compute_tap_metrics(
                    z, z_pos, labels, cfg.metric_names, spectral=spectral, t=cfg.uniformity_t,
                    alpha=cfg.alignment_alpha, num_classes=cfg.num_classes, failures=failures, fallbacks=fallbacks,
                )
            except Exception as exc:
                self._faults.report(f"metrics:{tap}", exc, "its metrics were skipped at this step")
                continue
            finally:
                for w in fallbacks[:1]:  # a device solver failed; the values were recomputed on the CPU in fp64
                    self._faults.report(f"metrics:{tap}:decomposition", w, "recomputed on the CPU in float64")
            self._faults.recovered(f"metrics:{tap}")
            for name, exc in failures.items():  # one failing metric drops only itself
                self._faults.report(f"metric:{tap}/{name}", exc,
                                    f"{name} was not logged at this step; the other metrics were")
            for name in sc:
                self._faults.recovered(f"metric:{tap}/{name}")
            tensors.update({keys.key(k, tap): v for k, v in sc.items()})
            hists.update({keys.key(k, tap): v for k, v in hi.items()})
        if not tensors:
            return {}, {}
        try:
            out = readback(tensors, hists)
            self._faults.recovered("readback")
            return out
        except Exception as exc:
            self._faults.report("readback", exc, "this evaluation was skipped")
            return {}, {}

    def any_stop(self, local: bool) -> bool:
        """The stop decision, OR-reduced across ranks (a collective: every rank calls it at every evaluation)."""
        if not dist_utils.is_distributed():
            return local
        try:
            return dist_utils.any_true(local)
        except Exception as exc:
            self._faults.report("distributed", exc, "the stop decision stays local")
            return local
