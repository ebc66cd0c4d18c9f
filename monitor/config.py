"""Typed, validated configuration of the :class:`~spherewatch.Monitor` (pydantic v2)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Literal, Mapping, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from spherewatch.alerts.rules import Rule, default_rules

__all__ = ["MonitorConfig", "PRESETS", "METRICS", "SPECTRAL_METRICS", "load_config", "ENV_PREFIX"]

ENV_PREFIX = "SPHEREWATCH_"

#: Every metric the Monitor can log (key ``<prefix>/<tap>/<name>``).
METRICS: Tuple[str, ...] = (
    "alignment",
    "uniformity",
    "uniformity_pos",
    "effective_rank",
    "effective_rank_centered",
    "normalized_std",
    "mean_cosine",
    "dead_dimensions",
    "collapsed_dimensions",
    "spectrum",
    "alpha_req",
    "nonfinite_fraction",
    "norm_stats",
    "nc1",
)
#: Metrics that need an eigen-decomposition (they follow ``spectral_every_n_steps``).
SPECTRAL_METRICS = frozenset(
    {"effective_rank", "effective_rank_centered", "collapsed_dimensions", "spectrum", "alpha_req"}
)
#: Cost presets. ``cheap``: O(N D), no decomposition. ``standard``: + uniformity and RankMe. ``full``: everything.
PRESETS: Dict[str, Tuple[str, ...]] = {
    "cheap": ("alignment", "normalized_std", "mean_cosine", "dead_dimensions", "nonfinite_fraction", "norm_stats"),
    "standard": (
        "alignment", "uniformity", "effective_rank", "normalized_std", "mean_cosine", "collapsed_dimensions",
        "nonfinite_fraction", "norm_stats",
    ),
    "full": METRICS,
}

SinkName = Literal["tensorboard", "mlflow", "jsonl", "memory"]


class MonitorConfig(BaseModel):
    """Everything the Monitor does, validated once at construction.

    Build it from keywords, a dict, a YAML / TOML / JSON file (:meth:`from_file`) and ``SPHEREWATCH_<FIELD>``
    environment variables (:meth:`from_env`). An unknown field or an invalid value raises a
    ``pydantic.ValidationError`` (a ``ValueError``) that names the field path and the allowed values.

    Example:
        >>> from spherewatch import MonitorConfig
        >>> MonitorConfig(every_n_steps=10, preset="full").every_n_steps
        10
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # schedule
    every_n_steps: int = Field(50, ge=1, description="evaluate the metrics every N optimizer steps")
    start_step: int = Field(0, ge=0, description="first step of the schedule (evaluated when sample_first_step)")
    sample_first_step: bool = Field(True, description="also evaluate at the first step seen (an early baseline)")
    log_spaced: bool = Field(False, description="also evaluate at steps 1, 2, 4, 8, ... below every_n_steps")
    spectral_every_n_steps: Optional[int] = Field(
        None, ge=1, description="cadence of the eigen-decomposition metrics (a multiple of every_n_steps; default: same)"
    )
    # sampling
    max_samples: int = Field(4096, ge=2, description="rows kept per tap for one evaluation (the memory bound)")
    window_steps: int = Field(
        1, ge=1, description="consecutive steps captured before each evaluation; rows are reservoir-sampled across them"
    )
    seed: int = 0
    # metrics
    preset: Literal["cheap", "standard", "full"] = "standard"
    metrics: Optional[Tuple[str, ...]] = Field(None, description="explicit metric list (overrides preset)")
    uniformity_t: float = Field(2.0, gt=0, allow_inf_nan=False)
    alignment_alpha: float = Field(2.0, gt=0, allow_inf_nan=False)
    num_classes: Optional[int] = Field(None, ge=2, description="for nc1; avoids a host sync")
    # capture
    pool: Literal["mean", "first", "last"] = Field(
        "mean", description="pooling of (B, T, H) token outputs of watched modules (mean honours an attention mask)"
    )
    # naming
    prefix: str = Field("spherewatch", min_length=1)
    default_tap: str = Field("embeddings", min_length=1)
    # sinks
    sinks: Optional[Tuple[SinkName, ...]] = Field(
        None, description="sinks to open; default: jsonl, unless the host hands its own sinks over"
    )
    log_dir: str = "runs/spherewatch"
    jsonl_path: Optional[str] = Field(None, description="default: <log_dir>/spherewatch.jsonl")
    tracking_uri: Optional[str] = Field(None, description="MLflow tracking URI; default sqlite:///mlflow.db")
    run_id: Optional[str] = None
    experiment_name: str = "spherewatch"
    run_name: Optional[str] = None
    spool_dir: Optional[str] = Field(None, description="where points that a sink could not take are spooled")
    close_timeout: float = Field(
        30.0, ge=0, allow_inf_nan=False,
        description="seconds close() waits for the sinks to take what is queued; the rest stays in the spool",
    )
    # alerts
    alerts: bool = Field(True, description="evaluate alert rules")
    rules: Optional[Tuple[Rule, ...]] = Field(None, description="alert rules; default: spherewatch.alerts.default_rules()")
    webhook_url: Optional[SecretStr] = Field(None, description="Slack-compatible webhook; or SPHEREWATCH_WEBHOOK_URL")
    webhook_timeout: float = Field(5.0, gt=0, allow_inf_nan=False)
    warn: bool = Field(True, description="emit a CollapseWarning for every alert")
    # behaviour
    strict: bool = Field(False, description="raise on internal failures instead of reporting and carrying on")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            # pydantic echoes the input in its message: never for the webhook URL, whose text is a secret
            if not any(e["loc"][:1] == ("webhook_url",) for e in err.errors()):
                raise
            details = []
            for e in err.errors():
                d: Dict[str, Any] = {"type": e["type"], "loc": e["loc"], "input": e["input"]}
                if e["loc"][:1] == ("webhook_url",):
                    d["input"] = "*** (hidden: the webhook URL is a secret)"
                if e.get("ctx"):
                    d["ctx"] = e["ctx"]
                details.append(d)
            raise ValidationError.from_exception_data(err.title, details) from None

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value):
        if value is None:
            return value
        unknown = [m for m in value if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; use any of: {', '.join(METRICS)}")
        return tuple(dict.fromkeys(value))

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, value):
        names = [r.name for r in value or ()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"alert rule names must be unique, got {twice} more than once; give each rule a distinct `name=`"
            )
        return value

    @field_validator("sinks")
    @classmethod
    def _unique_sinks(cls, value):
        return value if value is None else tuple(dict.fromkeys(value))  # ("jsonl", "jsonl") would log twice

    @field_validator("prefix", "default_tap")
    @classmethod
    def _no_slash(cls, value: str):
        if "/" in value.strip("/"):
            raise ValueError(f"{value!r} must not contain '/' (keys are <prefix>/<tap>/<metric>)")
        return value.strip("/")

    @model_validator(mode="after")
    def _cross_field(self):
        if self.spectral_every_n_steps is not None and self.spectral_every_n_steps % self.every_n_steps:
            raise ValueError(
                f"spectral_every_n_steps={self.spectral_every_n_steps} must be a multiple of "
                f"every_n_steps={self.every_n_steps}"
            )
        if self.window_steps > self.every_n_steps:
            raise ValueError(
                f"window_steps={self.window_steps} must not exceed every_n_steps={self.every_n_steps}"
            )
        return self

    # ----------------------------------------------------------------- derived
    @property
    def metric_names(self) -> Tuple[str, ...]:
        return self.metrics if self.metrics is not None else PRESETS[self.preset]

    @property
    def alert_rules(self) -> tuple:
        if not self.alerts:
            return ()
        return self.rules if self.rules is not None else default_rules()

    @property
    def resolved_jsonl_path(self) -> str:
        return self.jsonl_path or os.path.join(self.log_dir, "spherewatch.jsonl")

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_file(cls, path: Union[str, Path], **overrides: Any) -> "MonitorConfig":
        """Load ``.yaml``/``.yml``, ``.toml`` or ``.json`` (parsed, never evaluated). A top-level ``spherewatch``
        table (or ``[tool.spherewatch]`` in a pyproject) is used when present. Environment variables and then
        ``overrides`` take precedence over the file."""
        return load_config(path, **overrides)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides: Any) -> "MonitorConfig":
        """Defaults < ``SPHEREWATCH_<FIELD>`` variables < ``overrides``."""
        return cls(**{**_env_values(environ), **overrides})


def _env_values(environ: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    environ = os.environ if environ is None else environ
    out: Dict[str, Any] = {}
    for name in MonitorConfig.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if name in ("webhook_url", "tracking_uri", "run_id", "log_dir", "jsonl_path", "experiment_name",
                    "run_name", "prefix", "default_tap", "spool_dir"):
            out[name] = raw
            continue
        try:
            out[name] = json.loads(raw)
        except ValueError:
            # plain words: "standard", "mean"; comma lists for tuples: "tensorboard,mlflow"
            out[name] = tuple(p.strip() for p in raw.split(",")) if "," in raw or name in ("sinks", "metrics") else raw
    return out


def _read_file(path: Path) -> Dict[str, Any]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError("Reading YAML config needs `pyyaml`: pip install 'spherewatch[config]'.") from err
        try:
            data = yaml.safe_load(text) or {}  # safe_load: plain data only, tags that build objects are refused
        except yaml.YAMLError as err:
            raise ValueError(
                f"Cannot read config file {str(path)!r}: {err} (only plain YAML data is accepted: tags such as "
                "!!python/object are refused, the file is parsed, never evaluated)."
            ) from err
    elif suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python < 3.11
            import tomli as tomllib  # type: ignore[no-redef]
        data = tomllib.loads(text)
    elif suffix == ".json":
        data = json.loads(text)
    else:
        raise ValueError(f"Unsupported config file {str(path)!r}: use a .yaml, .yml, .toml or .json file.")
    if not isinstance(data, dict):
        raise ValueError(f"Config file {str(path)!r} must hold a mapping at the top level, got {type(data).__name__}.")
    if isinstance(data.get("tool"), dict) and "spherewatch" in data["tool"]:
        data = data["tool"]["spherewatch"]
    elif isinstance(data.get("spherewatch"), dict):
        data = data["spherewatch"]
    return data


def load_config(source: Union[None, str, Path, Mapping[str, Any], MonitorConfig] = None, **overrides: Any) -> MonitorConfig:
    """Build a config from ``None`` (defaults), a dict, a file path or a config, then apply env and overrides.

    Precedence, lowest first: defaults, the file or dict, ``SPHEREWATCH_*`` environment variables, ``overrides``.
    """
    if isinstance(source, MonitorConfig):
        base: Dict[str, Any] = source.model_dump(exclude_unset=True)
        if isinstance(source.webhook_url, SecretStr):
            base["webhook_url"] = source.webhook_url.get_secret_value()
    elif source is None:
        base = {}
    elif isinstance(source, Mapping):
        base = dict(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
        base = _read_file(path)
    else:
        raise TypeError(
            f"Expected a MonitorConfig, a dict or a path to a .yaml/.toml/.json file, got {type(source).__name__}."
        )
    return MonitorConfig(**{**base, **_env_values(), **overrides})
