"""Typed, validated configuration of the :class:`~spherewatch.Monitor` (pydantic v2)."""
from __future__ import annotations

import difflib
import json
import os
import textwrap
from pathlib import Path
from typing import Any, Dict, Iterable, List, Literal, Mapping, Optional, Tuple, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from spherewatch.alerts.advice import LossFamily
from spherewatch.alerts.rules import Rule, default_rules
from spherewatch.catalogue import PRESET_NAMES, head_specs, metric_specs
from spherewatch.catalogue import preset as catalogue_preset
from spherewatch.delivery.registry import SINK_NAMES, SINKS
from spherewatch.keys import KEY_SEGMENT, KeySchemeName
from spherewatch.redact import redact

__all__ = [
    "MonitorConfig", "PRESETS", "METRICS", "SPECTRAL_METRICS", "load_config", "ENV_PREFIX", "known_metric_keys",
    "MAX_SAMPLES_CEILING", "MAX_CONFIG_DEPTH", "MAX_CONFIG_ITEMS", "MAX_CONFIG_FILE_BYTES",
]

ENV_PREFIX = "SPHEREWATCH_"

#: Every metric the Monitor can log (key ``<prefix>/<tap>/<name>``), from the catalogue (:mod:`spherewatch.catalogue`).
METRICS: Tuple[str, ...] = tuple(s.name for s in metric_specs())
#: Metrics that need an eigen-decomposition (they follow ``spectral_every_n_steps``).
SPECTRAL_METRICS = frozenset(s.name for s in metric_specs() if s.spectral)
#: Cost presets. ``cheap``: O(N D), no decomposition. ``standard``: + uniformity and RankMe. ``full``: everything.
PRESETS: Dict[str, Tuple[str, ...]] = {name: catalogue_preset(name) for name in PRESET_NAMES}

#: A sink name: one entry of the sink registry (:data:`spherewatch.delivery.registry.SINKS`).
SinkName = Literal[SINK_NAMES]  # type: ignore[valid-type]

#: Largest ``max_samples`` accepted (rows kept per tap; 2**20 rows of 768 fp32 values are 3 GiB). The actual bytes
#: (``max_samples`` x D x 4 per view) are checked against ``max_buffer_bytes`` at the first capture of a tap,
#: before anything is allocated.
MAX_SAMPLES_CEILING = 2**20
#: Nesting depth and number of values (counting repeated YAML aliases each time) a config may hold: deeper or
#: bigger input (a recursive structure, a "billion laughs" alias bomb) fails at once, naming the field.
MAX_CONFIG_DEPTH = 16
MAX_CONFIG_ITEMS = 10_000
#: Config files larger than this are refused before they are parsed.
MAX_CONFIG_FILE_BYTES = 1 << 20
_PATH_FIELDS = ("log_dir", "jsonl_path", "spool_dir", "tracking_uri", "run_id", "experiment_name", "run_name")
_NUMBER_FIELDS = ("every_n_steps", "start_step", "spectral_every_n_steps", "max_samples", "window_steps", "seed",
                  "uniformity_t", "alignment_alpha", "num_classes", "webhook_timeout", "max_buffer_bytes")


def known_metric_keys() -> Tuple[str, ...]:
    """Every metric name a rule can watch (the ``<metric>`` of ``<prefix>/<tap>/<metric>``): the metrics, the keys
    logged beside them (``norm_mean``, ``zero_norm_fraction``, ``alpha_req_r2``, ...), ``rows`` and each metric's
    ``<metric>_stderr``."""
    names: List[str] = [m for m in METRICS if m != "norm_stats"]
    for s in metric_specs():
        names += s.derived
    names.append("rows")
    names += [f"{m}_stderr" for m in list(names)]
    names += [s.name for s in head_specs()]  # the assignment heads' metrics (head taps, issue 18)
    return tuple(dict.fromkeys(names))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _error(title: str, loc: Tuple[Any, ...], msg: str, value: Any = None) -> ValidationError:
    """A pydantic ``ValidationError`` (a ``ValueError``) at ``loc`` with ``msg`` (for checks pydantic cannot do)."""
    detail = InitErrorDetails(type=PydanticCustomError("value_error", "{msg}", {"msg": msg}), loc=loc,
                              input=_short(value))
    return ValidationError.from_exception_data(title, [detail])


def _short(value: Any) -> Any:
    """A small stand-in for a value in an error (a huge or recursive input must not be printed)."""
    if isinstance(value, (dict, list, tuple, set)):
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, (str, bytes)) and len(value) > 200:
        return value[:200]
    return value if isinstance(value, (str, bytes, int, float, bool, type(None))) else type(value).__name__


def _check_shape(field: str, value: Any) -> Optional[str]:
    """Why ``value`` is too deep or too big for a config field (an iterative walk that stops early), or None."""
    stack = [(value, 1)]
    items = 0
    while stack:
        v, depth = stack.pop()
        items += 1
        if items > MAX_CONFIG_ITEMS:
            return (f"holds more than {MAX_CONFIG_ITEMS} values (repeated YAML aliases count each time): refused "
                    "before it is expanded")
        if depth > MAX_CONFIG_DEPTH:
            return f"is nested more than {MAX_CONFIG_DEPTH} levels deep (or refers to itself)"
        if isinstance(v, Mapping):
            for k, x in v.items():
                if not isinstance(k, str):
                    return f"has a key {_short(k)!r} of type {type(k).__name__}; keys must be strings"
                stack.append((x, depth + 1))
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, bytes):
            return "is bytes; give a string"
        elif isinstance(v, str) and "\x00" in v:
            return "contains a NUL byte"
    return None


def _precheck(data: Mapping[Any, Any], fields: Iterable[str], title: str = "MonitorConfig") -> None:
    """Keys are known strings (with "did you mean"), values are of bounded shape: else a ValidationError."""
    fields = list(fields)
    for key, value in data.items():
        if not isinstance(key, str):
            raise _error(title, (str(_short(key)),), f"config field names must be strings, got {type(key).__name__} "
                         f"{_short(key)!r}", value)
        if key not in fields:
            hint = did_you_mean(key, fields)
            if not hint:  # no close match: the fields, wrapped (a did-you-mean is enough on its own)
                hint = "\n" + textwrap.fill(f"Fields: {', '.join(fields)}.", 100, subsequent_indent="    ") + "\n"
            raise _error(title, (key,), f"unknown config field {key!r}.{hint}", value)
        why = _check_shape(key, value)
        if why:
            raise _error(title, (key,), f"`{key}` {why}.", value)


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
    max_samples: int = Field(
        4096, ge=2, le=MAX_SAMPLES_CEILING, description="rows kept per tap for one evaluation (the memory bound)"
    )
    max_buffer_bytes: int = Field(
        1 << 31, ge=1, description="bytes one tap's buffer may take (max_samples x D x 4 per view), checked at its "
        "first capture before allocating; a bigger tap is reported and skipped"
    )
    window_steps: int = Field(
        1, ge=1, description="consecutive steps captured before each evaluation; rows are reservoir-sampled across them"
    )
    every_micro_batch: bool = Field(
        False, description="take every batch of a capture step (gradient accumulation: all micro-batches, up to "
        "max_samples rows, reservoir-sampled), not only the first; recomputed forwards (gradient checkpointing) "
        "are then taken twice"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the row reservoirs")
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
    key_scheme: KeySchemeName = Field(
        "short", description="short: <prefix>/<metric> for the default tap, <prefix>/<tap>/<metric> for others; "
                             "tap: <prefix>/<tap>/<metric> for every tap (the keys logged before key_scheme existed)"
    )
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
    webhook_timeout: float = Field(5.0, gt=0, le=300, allow_inf_nan=False, description="seconds per webhook request")
    alert_channels: Tuple[Literal["wandb", "trackio"], ...] = Field(
        (), description="also send each fired alert as a W&B alert (run.alert) / a trackio alert (trackio.alert), "
        "through the wandb / trackio sink (added to the sinks when absent)"
    )
    warn: bool = Field(
        True, description="deliver each alert as one CollapseWarning (faults: MonitorFault); False: one log record"
    )
    loss_family: Optional[LossFamily] = Field(
        None, description="what kind of loss trains the embeddings: picks the advice in alert messages (None: neutral)"
    )
    # behaviour
    strict: bool = Field(False, description="raise on internal failures instead of reporting and carrying on")

    def __init__(self, **data: Any) -> None:
        _precheck(data, type(self).model_fields)  # errors located at the field
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

    @model_validator(mode="before")
    @classmethod
    def _precheck_validate(cls, data: Any) -> Any:
        if isinstance(data, Mapping):  # model_validate(...) does not go through __init__
            try:
                _precheck(data, cls.model_fields)
            except ValidationError as err:
                raise ValueError(str(err)) from None
        return data

    @field_validator(*_NUMBER_FIELDS, mode="before")
    @classmethod
    def _no_booleans(cls, value, info):
        if isinstance(value, bool):  # True is an int to Python: every_n_steps=True would mean 1
            raise ValueError(f"`{info.field_name}` must be a number, got the boolean {value!r}")
        return value

    @field_validator(*_PATH_FIELDS, mode="before")
    @classmethod
    def _clean_string(cls, value, info):
        if isinstance(value, str):
            if "\x00" in value:
                raise ValueError(f"`{info.field_name}` contains a NUL byte: {value[:80]!r}")
            if len(value) > 4096:
                raise ValueError(f"`{info.field_name}` is {len(value)} characters long; at most 4096")
        return value

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value):
        if value is None:
            return value
        unknown = [m for m in value if m not in METRICS]
        if unknown:
            hint = did_you_mean(unknown[0], METRICS)
            raise ValueError(f"unknown metric(s) {unknown};{hint} use any of: {', '.join(METRICS)}")
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
        from fnmatch import fnmatchcase

        known = known_metric_keys()
        for i, rule in enumerate(value or ()):
            pattern = rule.metric
            if any(c in pattern for c in "*?["):
                if not any(fnmatchcase(k, pattern) for k in known):
                    raise ValueError(f"rule {i} ({rule.name!r}): metric pattern {pattern!r} matches no metric the "
                                     f"monitor logs; known: {', '.join(known)}")
            elif pattern not in known:
                raise ValueError(f"rule {i} ({rule.name!r}): unknown metric {pattern!r}, it would never fire."
                                 f"{did_you_mean(pattern, known)} Known: {', '.join(known)}")
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
        value = value.strip("/")
        if not KEY_SEGMENT.match(value):
            raise ValueError(f"{value!r} must be made of letters, digits, '_', '.' and '-' (it is part of every log "
                             "key, <prefix>/<tap>/<metric>)")
        return value

    @field_validator("default_tap")
    @classmethod
    def _not_reserved(cls, value: str):
        from spherewatch.keys import RESERVED_TAPS

        if value in RESERVED_TAPS:
            raise ValueError(f"default_tap={value!r} is reserved ({', '.join(RESERVED_TAPS)} name keys that are not "
                             "metrics): pick another name, e.g. 'embeddings'")
        return value

    @property
    def keys(self):
        """The :class:`~spherewatch.keys.KeyScheme` of this configuration (how the Monitor names its keys)."""
        from spherewatch.keys import KeyScheme

        return KeyScheme(self.prefix, self.default_tap, self.key_scheme)

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

    # ----------------------------------------------------------------- secrets
    @field_serializer("tracking_uri")
    def _dump_tracking_uri(self, value: Optional[str], info: FieldSerializationInfo) -> Optional[str]:
        """``model_dump`` shows the tracking URI with its credentials hidden (``http://***@host``); the value itself
        (``config.tracking_uri``) keeps them. ``context={"secrets": True}`` dumps it whole, for a config rebuilt
        in this process."""
        if value is None or (info.context or {}).get("secrets"):
            return value
        return redact(value)

    def __repr_args__(self):  # str() and repr(): no credentials either
        for name, value in super().__repr_args__():
            yield name, (redact(value) if name == "tracking_uri" and isinstance(value, str) else value)

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


#: Fields whose environment variable is taken as it is (never parsed as JSON): the sinks' (from the registry) and these.
_TEXT_FIELDS = frozenset({"webhook_url", "prefix", "default_tap", "spool_dir"}.union(
    *(entry.text_fields for entry in SINKS.values())))


def _env_values(environ: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    environ = os.environ if environ is None else environ
    out: Dict[str, Any] = {}
    allowed = [ENV_PREFIX + name.upper() for name in MonitorConfig.model_fields]
    for var in environ:
        if isinstance(var, str) and var.startswith(ENV_PREFIX) and var not in allowed:
            raise _error("environment", (var,), f"unknown environment variable {var}: spherewatch reads "
                         f"{ENV_PREFIX}<FIELD> for config fields only.{did_you_mean(var, allowed)}", environ[var])
    for name in MonitorConfig.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if name in _TEXT_FIELDS:
            out[name] = raw
            continue
        try:
            out[name] = json.loads(raw)
        except RecursionError:
            raise _error("environment", (ENV_PREFIX + name.upper(),), "nested too deeply", raw[:80]) from None
        except ValueError:
            # plain words: "standard", "mean"; comma lists for tuples: "tensorboard,mlflow"
            out[name] = (tuple(p.strip() for p in raw.split(",")) if "," in raw or name in ("sinks", "metrics", "alert_channels")
                         else raw)
    return out


def _read_file(path: Path) -> Dict[str, Any]:
    suffix = path.suffix.lower()
    where = str(path)
    if suffix not in (".yaml", ".yml", ".toml", ".json"):
        raise ValueError(f"Unsupported config file {where!r}: use a .yaml, .yml, .toml or .json file.")
    size = path.stat().st_size
    if size > MAX_CONFIG_FILE_BYTES:
        raise ValueError(f"Config file {where!r} is {size} bytes; at most {MAX_CONFIG_FILE_BYTES} are read.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"Config file {where!r} is not UTF-8 text (byte {err.start}: {raw[err.start:err.start + 1]!r}); "
                         "save it as UTF-8.") from None
    if "\x00" in text:
        raise ValueError(f"Config file {where!r} contains a NUL byte: it is not a text config file.")
    try:
        data = _parse(suffix, text, where)
    except RecursionError:
        raise ValueError(f"Cannot read config file {where!r}: it is nested too deeply.") from None
    if not isinstance(data, dict):
        raise ValueError(f"Config file {where!r} must hold a mapping at the top level, got {type(data).__name__}.")
    if isinstance(data.get("tool"), dict) and "spherewatch" in data["tool"]:
        data = data["tool"]["spherewatch"]
    elif isinstance(data.get("spherewatch"), dict):
        data = data["spherewatch"]
    if not isinstance(data, dict):
        raise ValueError(f"The spherewatch table of {where!r} must be a mapping, got {type(data).__name__}.")
    bad = next((k for k in data if not isinstance(k, str)), _NO_KEY)
    if bad is not _NO_KEY:  # e.g. YAML `?` or `1: x`: say which file, not only which key
        raise ValueError(f"Config file {where!r}: field names must be strings, got {type(bad).__name__} "
                         f"{_short(bad)!r}.")
    return data


_NO_KEY = object()


def _parse(suffix: str, text: str, where: str) -> Any:
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError("Reading YAML config needs `pyyaml`: pip install 'spherewatch[config]'.") from err
        try:
            # safe_load: plain data only, tags that build objects are refused. Aliases are resolved to shared
            # objects (no expansion here); MonitorConfig then refuses more than MAX_CONFIG_ITEMS values.
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ValueError(
                f"Cannot read config file {where!r}: {err} (only plain YAML data is accepted: tags such as "
                "!!python/object are refused, the file is parsed, never evaluated)."
            ) from None
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python < 3.11
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"Cannot read config file {where!r}: {err}.") from None
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError(f"Cannot read config file {where!r}: {err}.") from None


def load_config(source: Union[None, str, Path, Mapping[str, Any], MonitorConfig] = None, **overrides: Any) -> MonitorConfig:
    """Build a config from ``None`` (defaults), a dict, a file path or a config, then apply env and overrides.

    Precedence, lowest first: defaults, the file or dict, ``SPHEREWATCH_*`` environment variables, ``overrides``.
    """
    if isinstance(source, MonitorConfig):
        base: Dict[str, Any] = source.model_dump(exclude_unset=True, context={"secrets": True})
        if isinstance(source.webhook_url, SecretStr):
            base["webhook_url"] = source.webhook_url.get_secret_value()
    elif source is None:
        base = {}
    elif isinstance(source, Mapping):
        base = dict(source)
    elif isinstance(source, (str, Path)):
        if "\x00" in str(source):
            raise ValueError(f"Config path {str(source)[:80]!r} contains a NUL byte.")
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
        base = _read_file(path)
    else:
        raise TypeError(
            f"Expected a MonitorConfig, a dict or a path to a .yaml/.toml/.json file, got {type(source).__name__}."
        )
    _precheck(base, MonitorConfig.model_fields)  # before merging: non-string keys cannot be keywords
    return MonitorConfig(**{**base, **_env_values(), **overrides})
