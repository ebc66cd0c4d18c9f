"""Default rules of the assignment head (issue 18): the two collapses of DINO / iBOT / SwAV / MSN heads.

They watch only the head metrics (:mod:`spherewatch.metrics.head`), which only head taps log
(:meth:`Monitor.observe_head <spherewatch.Monitor.observe_head>`, ``Monitor.watch(head, kind="head")``): without a
head tap they never see a sample. All are :class:`~spherewatch.alerts.rules.CollapseRule` s -- a value in the
collapse zone that is not recovering, never on the first sample of a run (a random head starts anywhere):

* **uniform output** (DINO's first mode: every sample spread evenly over every prototype; the teacher's entropy at
  ``log K``): ``head_uniform_output`` (warning, the first breaching evaluation) when ``teacher_entropy`` is within
  0.05 of 1, ``head_uniform_output_persists`` (critical) after three in a row. Usage is then near 1 as well (it is
  never below the teacher's entropy) and the teacher-student KL falls to 0 in the evaluations after.
* **one prototype dominating** (DINO's second mode; SwAV without Sinkhorn): ``head_prototype_collapse`` (warning)
  when ``prototypes_in_use`` (``exp`` of the usage entropy) has fallen below half of the highest value the run
  reached (above 1; a healthy value depends on K and on the rows of a window, so the reference is the run itself),
  ``head_prototype_collapse_persists`` (critical) after three in a row, and ``head_one_prototype`` (critical, two
  in a row) when one prototype takes at least half of all samples (``max_mean_probability >= 0.5``; healthy heads
  stay near ``1 / prototypes in use``).

Measured on tests/scenarios/heads.py (benchmarks/heads.py prints the table): healthy DINO (teacher-temperature
warm-up 0.02 -> 0.04, prototypes frozen for 50 steps, K = 256) reads a teacher entropy of 0.14 -> 0.75 and 78 ->
about 200 prototypes in use; healthy SwAV (K = 64) 0.33 -> 0.89 -> 0.55 and 61-64 in use. Uniform output reads
0.999; DINO without centring falls from about 200 prototypes in use to 46 within 25 steps (24 later; one prototype
takes 0.28 of the samples), SwAV without Sinkhorn to 1 (one prototype takes them all).

The fixes each alert names come from the catalogue's hints (:mod:`spherewatch.catalogue`): the teacher's
temperature and its warm-up, centring and the EMA momentum (uniform output); centring, Sinkhorn / equipartition,
prototype freezing, the teacher temperature and the EMA momentum (one prototype).

Example:
    >>> [r.name for r in head_rules()]  # doctest: +NORMALIZE_WHITESPACE
    ['head_uniform_output', 'head_uniform_output_persists', 'head_prototype_collapse',
     'head_prototype_collapse_persists', 'head_one_prototype']
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

__all__ = ["HEAD_RULE_SETTINGS", "head_rules"]

#: The numbers behind :func:`head_rules` (see the module's docstring for how each decides and what it was checked on).
HEAD_RULE_SETTINGS: Dict[str, Dict[str, Any]] = {
    "head_uniform_output": dict(
        kind="collapse", metric="teacher_entropy", collapsed=1.0, margin=0.05, patience=1, hysteresis=0.5,
        severity="warning",
    ),
    "head_uniform_output_persists": dict(
        kind="collapse", metric="teacher_entropy", collapsed=1.0, margin=0.05, patience=3, hysteresis=0.5,
        severity="critical",
    ),
    "head_prototype_collapse": dict(
        kind="collapse", metric="prototypes_in_use", collapsed=1.0, margin=0.5, relative=True, patience=1,
        hysteresis=0.2, severity="warning",
    ),
    "head_prototype_collapse_persists": dict(
        kind="collapse", metric="prototypes_in_use", collapsed=1.0, margin=0.5, relative=True, patience=3,
        hysteresis=0.2, severity="critical",
    ),
    "head_one_prototype": dict(
        kind="collapse", metric="max_mean_probability", collapsed=1.0, margin=0.5, patience=2, hysteresis=0.2,
        severity="critical",
    ),
}


def head_rules() -> Tuple[Any, ...]:
    """The default head rules (validated :class:`~spherewatch.alerts.rules.CollapseRule` s)."""
    from spherewatch.alerts.rules import RULE_ADAPTER

    return tuple(RULE_ADAPTER.validate_python({"name": name, **settings}) for name, settings in HEAD_RULE_SETTINGS.items())
