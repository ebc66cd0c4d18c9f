"""Keys: how every key the Monitor logs is built and parsed, in order of importance, with what it means.

Each metric's entry (title, category, description, how to read it, rank) is read from the metric catalogue,
:mod:`spherewatch.catalogue`; :data:`CATALOGUE`, :func:`describe`, :func:`info` and :func:`order_keys` serve it
by key.

One place defines how keys are built, in which order they are logged and shown, which category of the
dashboards they belong to and how to read them. TensorBoard's custom-scalars layout and tag descriptions,
the order of keys sent to TensorBoard and MLflow, and the panels of ``spherewatch report`` all read it.

Key scheme (public API, stable; ``MonitorConfig.key_scheme``):

* ``"short"`` (the default): the default tap's metrics are ``<prefix>/<metric>`` (``spherewatch/uniformity``), any
  other tap's ``<prefix>/<tap>/<metric>`` (``spherewatch/encoder/uniformity``). Chart titles that MLflow and
  TensorBoard cut at ~30 characters stay distinct (``spherewatch/effective_rank`` next to
  ``spherewatch/effective_rank_centered``, instead of two ``spherewatch/embeddings/effective…``).
* ``"tap"``: every key names its tap, ``<prefix>/<tap>/<metric>`` (``spherewatch/embeddings/uniformity``): the
  keys spherewatch logged before ``key_scheme`` existed, for dashboards, rules and monitors
  (``EarlyStopping(monitor=...)``) written against them.

Both forms parse the same way (:func:`parse_key`): one segment after the prefix is a metric of the default tap,
two are ``<tap>/<metric>``, so ``spherewatch report`` reads runs of either scheme and overlays them; the alert
counter ``<prefix>/alerts/count`` and the fault keys ``<prefix>/monitor/<part>`` are never metric keys
(``alerts``, ``monitor`` and ``params`` are reserved and cannot name a tap). Metric names hold no ``/``.
Chart titles inside the custom-scalars layout are the catalogue's ``title`` ("uniformity", "effective rank"),
one chart per metric with a line per tap.

Categories, in this order:

* ``Collapse overview``: the four numbers that answer "did it collapse" (uniformity, effective rank, mean
  cosine, alignment), the host's training loss when one is logged beside them (a loss that keeps improving
  while these degrade is the signature of collapse), and the alert count;
* ``Spectrum``: the eigenvalue spectrum and what is derived from it (dimensional collapse);
* ``Health checks``: everything else (norms, non-finite values, dead dimensions, ...), closed by default.

Example:
    >>> from spherewatch.keys import describe, order_keys
    >>> order_keys(["spherewatch/norm_mean", "spherewatch/uniformity"])
    ['spherewatch/uniformity', 'spherewatch/norm_mean']
    >>> describe("spherewatch/effective_rank").category
    'Collapse overview'
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Dict, Iterable, List, Literal, Optional, Tuple, get_args

from spherewatch.catalogue import CATEGORIES, HEALTH, OVERVIEW, SPECTRUM, key_specs  # noqa: F401 - re-exported

__all__ = [
    "CATEGORIES",
    "CATALOGUE",
    "KEY_SCHEMES",
    "RESERVED_TAPS",
    "KEY_SEGMENT",
    "KeyScheme",
    "LOSS_PATTERN",
    "ALERTS_INFO",
    "LOSS_INFO",
    "MetricInfo",
    "alert_count_key",
    "describe",
    "info",
    "is_loss_key",
    "metric_key",
    "metric_rank",
    "order_keys",
    "parse_key",
]

# the categories and every metric's entry come from the catalogue (spherewatch.catalogue), re-exported here
#: The host's loss, matched on keys outside the monitor's prefix (``loss``, ``train/loss``, ``train_loss``,
#: ``val_loss_epoch``...). A regular expression matched from the start of the tag (as TensorBoard does).
LOSS_PATTERN = r"^(?:[\w.-]+[/_])*loss(?:[/_][\w.-]+)*$"


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """What one metric is and how to read it.

    Attributes:
        metric: the metric part of the key (``uniformity``).
        title: short chart title (``uniformity``, ``effective rank``).
        category: one of :data:`CATEGORIES`.
        description: one line: what it measures.
        collapsed: its value when the embeddings have collapsed.
        healthy: its value on healthy embeddings.
    """

    metric: str
    title: str
    category: str
    description: str
    collapsed: str
    healthy: str

    @property
    def one_line(self) -> str:
        """``description`` plus how to read it, in one line (TensorBoard's tag description)."""
        return f"{self.description} Collapsed: {self.collapsed}. Healthy: {self.healthy}."


#: Every key the Monitor logs with a chart of its own, most important first (from :mod:`spherewatch.catalogue`).
CATALOGUE: Tuple[MetricInfo, ...] = tuple(
    MetricInfo(s.name, s.title, s.category, s.description, s.collapsed, s.healthy) for s in key_specs()
)
_BY_METRIC: Dict[str, MetricInfo] = {info.metric: info for info in CATALOGUE}  # outside this module: info()
_RANK: Dict[str, int] = {info.metric: i for i, info in enumerate(CATALOGUE)}
_LOSS = re.compile(LOSS_PATTERN)

LOSS_INFO = MetricInfo("loss", "training loss (host)", OVERVIEW,
                       "the host's own loss, logged beside the geometry.",
                       "often still improving while the embeddings collapse", "improving")
ALERTS_INFO = MetricInfo("alerts/count", "alerts fired", OVERVIEW,
                         "cumulative number of collapse alerts fired by spherewatch.", "1 or more", "0")


#: The key schemes (``MonitorConfig.key_scheme``): see the module docstring.
KeySchemeName = Literal["short", "tap"]
KEY_SCHEMES: Tuple[str, ...] = get_args(KeySchemeName)
#: Path segments that follow the prefix in keys that are not metrics: no tap (and no metric) may take these names.
RESERVED_TAPS: Tuple[str, ...] = ("alerts", "monitor", "params")
#: What a segment of a key (a prefix part, a tap) may hold: letters, digits, ``_``, ``.`` and ``-``.
KEY_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]+$")


def metric_key(metric: str, tap: Optional[str] = None, prefix: str = "spherewatch", *,
               default_tap: str = "embeddings", scheme: str = "short") -> str:
    """The log key of ``metric`` on ``tap`` (default: the default tap) under the key ``scheme``.

    Example:
        >>> metric_key("uniformity"), metric_key("uniformity", "encoder")
        ('spherewatch/uniformity', 'spherewatch/encoder/uniformity')
        >>> metric_key("uniformity", scheme="tap")
        'spherewatch/embeddings/uniformity'
    """
    if scheme not in KEY_SCHEMES:
        raise ValueError(f"Unknown key scheme {scheme!r}: use one of {list(KEY_SCHEMES)}.")
    tap = default_tap if tap is None else tap
    head = prefix.rstrip("/")
    if scheme == "short" and tap == default_tap:
        return f"{head}/{metric}"
    return f"{head}/{tap}/{metric}"


def alert_count_key(prefix: str = "spherewatch") -> str:
    """The cumulative alert counter, ``<prefix>/alerts/count`` (TensorBoard and MLflow)."""
    return f"{prefix.rstrip('/')}/alerts/count"


def parse_key(key: str, prefix: str = "spherewatch", default_tap: str = "embeddings") -> Optional[Tuple[str, str]]:
    """``(tap, metric)`` of a metric key of either scheme; ``None`` for other keys (the alert counter, fault keys,
    the host's keys, another prefix).

    Example:
        >>> parse_key("spherewatch/uniformity"), parse_key("spherewatch/embeddings/uniformity")
        (('embeddings', 'uniformity'), ('embeddings', 'uniformity'))
        >>> parse_key("spherewatch/encoder/effective_rank"), parse_key("spherewatch/alerts/count")
        (('encoder', 'effective_rank'), None)
    """
    head = prefix.rstrip("/") + "/"
    if not isinstance(key, str) or not key.startswith(head):
        return None
    first, sep, rest = key[len(head):].partition("/")
    if not first or first in RESERVED_TAPS:
        return None
    if not sep:
        return default_tap, first
    if not rest:
        return None
    return first, rest


@dataclasses.dataclass(frozen=True)
class KeyScheme:
    """How one Monitor names its keys: ``prefix``, ``default_tap`` and ``scheme`` (``"short"`` or ``"tap"``).

    Example:
        >>> keys = KeyScheme()
        >>> keys.key("uniformity"), keys.key("uniformity", "encoder")
        ('spherewatch/uniformity', 'spherewatch/encoder/uniformity')
        >>> keys.canonical("spherewatch/embeddings/uniformity")  # a key of the other scheme, in this one
        'spherewatch/uniformity'
    """

    prefix: str = "spherewatch"
    default_tap: str = "embeddings"
    scheme: str = "short"

    def __post_init__(self) -> None:
        if self.scheme not in KEY_SCHEMES:
            raise ValueError(f"Unknown key scheme {self.scheme!r}: use one of {list(KEY_SCHEMES)}.")

    def key(self, metric: str, tap: Optional[str] = None) -> str:
        """The key of ``metric`` on ``tap`` (default: the default tap)."""
        return metric_key(metric, tap, self.prefix, default_tap=self.default_tap, scheme=self.scheme)

    def parse(self, key: str) -> Optional[Tuple[str, str]]:
        """``(tap, metric)`` of a metric key of either scheme, ``None`` for other keys."""
        return parse_key(key, self.prefix, self.default_tap)

    def canonical(self, key: str) -> str:
        """``key`` as this scheme writes it (a metric key of the other scheme is renamed; other keys are kept)."""
        parts = self.parse(key)
        return key if parts is None else self.key(parts[1], parts[0])


def is_loss_key(key: str, prefix: str = "spherewatch") -> bool:
    """Whether ``key`` looks like the host's loss (outside the monitor's prefix).

    Example:
        >>> [is_loss_key(k) for k in ("train/loss", "train_loss", "loss", "spherewatch/uniformity")]
        [True, True, True, False]
    """
    return not key.startswith(prefix.rstrip("/") + "/") and _LOSS.match(key) is not None


def describe(key: str, prefix: str = "spherewatch") -> Optional[MetricInfo]:
    """The catalogue entry of a key (a metric of any tap, the alert count or the host's loss); ``None`` if unknown."""
    if key == alert_count_key(prefix):
        return ALERTS_INFO
    if is_loss_key(key, prefix):
        return LOSS_INFO
    parts = parse_key(key, prefix)
    return _BY_METRIC.get(parts[1]) if parts is not None else None


def info(metric: str) -> Optional[MetricInfo]:
    """The catalogue entry of a metric name (``uniformity``, ``norm_mean``); ``None`` if it has none.

    Example:
        >>> info("effective_rank").title
        'effective rank'
    """
    return _BY_METRIC.get(metric)


def _priority(key: str, prefix: str) -> Tuple[int, int, str]:
    parts = parse_key(key, prefix)
    if key == alert_count_key(prefix):
        return (0, len(CATALOGUE) + 1, key)
    if is_loss_key(key, prefix):
        return (0, _RANK["alignment"] + 1, key)  # right after the overview metrics
    if parts is None:
        return (len(CATEGORIES), len(CATALOGUE) + 2, key)  # after every category
    rank = _RANK.get(parts[1], len(CATALOGUE))
    category = CATEGORIES.index(_BY_METRIC[parts[1]].category) if parts[1] in _BY_METRIC else len(CATEGORIES) - 1
    return (category, rank, f"{parts[1]}\0{parts[0]}")


def order_keys(keys: Iterable[str], prefix: str = "spherewatch") -> List[str]:
    """``keys`` in order of importance: category, then catalogue rank, then tap; unknown keys last."""
    return sorted(keys, key=lambda k: _priority(k, prefix))


def metric_rank(metric: str) -> int:
    """Position of ``metric`` in the catalogue (unknown metrics after every known one)."""
    return _RANK.get(metric, len(CATALOGUE))


#: Prefix of the Monitor's configuration among the run's parameters (MLflow params, TensorBoard text).
PARAM_PREFIX = "spherewatch."
_SECRET_FIELDS = ("webhook_url", "tracking_uri", "run_id", "spool_dir", "jsonl_path", "log_dir")


def param_field(key: str) -> Optional[str]:
    """The configuration field a run parameter holds (``"spherewatch.every_n_steps"`` -> ``"every_n_steps"``), or
    ``None`` for a parameter that is not the Monitor's (a host's, a user's ``log_params``).

    Example:
        >>> param_field("spherewatch.preset"), param_field("lr")
        ('preset', None)
    """
    return key[len(PARAM_PREFIX):] if key.startswith(PARAM_PREFIX) else None


def config_params(config) -> Dict[str, str]:
    """The Monitor's configuration as flat run parameters, ``spherewatch.<field>`` (secrets and paths left out;
    the metrics and the alert rules by name).

    Example:
        >>> from spherewatch.config import MonitorConfig
        >>> config_params(MonitorConfig(every_n_steps=10))["spherewatch.every_n_steps"]
        '10'
    """
    dumped = config.model_dump(exclude=set(_SECRET_FIELDS) | {"rules", "metrics"})
    params = {f"{PARAM_PREFIX}{k}": ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
              for k, v in dumped.items()}
    params[f"{PARAM_PREFIX}metrics"] = ",".join(config.metric_names)
    from spherewatch.alerts.rules import rules_for_family  # (the alerts package imports this module)

    rules = rules_for_family(config.alert_rules, getattr(config, "loss_family", None))  # the rules of this run
    params[f"{PARAM_PREFIX}rules"] = ",".join(str(getattr(r, "name", r)) for r in rules)
    for rule in rules:  # each rule's settings, so that a report can draw its thresholds
        dump = getattr(rule, "model_dump", None)
        if callable(dump):
            settings = dump(mode="json", exclude_none=True)
            if not settings.get("by_family"):  # most rules have no per-family settings
                settings.pop("by_family", None)
            text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
            params[f"{PARAM_PREFIX}rule.{rule.name}"] = text
    return params
