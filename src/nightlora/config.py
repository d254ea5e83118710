"""Configuration: defaults < TOML file < environment < flags.

The core never sees raw dicts: it takes the typed, validated models below.
Every problem in a file (unknown keys, wrong types) is reported at once, in one
line that names the file and each key.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nightlora.errors import ConfigError

ENV_PREFIX = "NIGHTLORA_"
CONFIG_ENV = "NIGHTLORA_CONFIG"


def default_data_dir() -> Path:
    """Where Hanni keeps its data: Application Support on macOS, the user data dir elsewhere."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Hanni"
    return Path(platformdirs.user_data_dir("Hanni", appauthor=False))


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("nightlora", appauthor=False)) / "config.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Section):
    data_dir: Path = Field(default_factory=default_data_dir)
    db: Path = Path("hanni.db")
    system_prompt: Path = Path("system_prompt.txt")
    # The tool's own files (runs, adapter store, state db, lock, status file).
    state_dir: Path = Path("nightlora")

    def resolve(self, p: Path) -> Path:
        p = Path(os.path.expanduser(str(p)))
        return p if p.is_absolute() else Path(os.path.expanduser(str(self.data_dir))) / p

    @property
    def db_path(self) -> Path:
        return self.resolve(self.db)

    @property
    def system_prompt_path(self) -> Path:
        return self.resolve(self.system_prompt)

    @property
    def state_path(self) -> Path:
        return self.resolve(self.state_dir)


class DataConfig(_Section):
    training_dir: Path = Path("training")
    min_feedback: int = Field(10, ge=0)
    min_messages: int = Field(4, ge=0)
    # Percentages of conversations in train / valid / test, by a stable hash of the id.
    split: tuple[int, int, int] = (80, 10, 10)

    @field_validator("split")
    @classmethod
    def _split_sums_to_100(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if sum(v) != 100 or min(v) < 0:
            raise ValueError("must be three non-negative percentages that add up to 100")
        return v


class TrainConfig(_Section):
    backend: Literal["auto", "mlx", "torch"] = "auto"
    # A local folder or a name known to `nightlora model prepare` (e.g. smollm2-135m).
    model: str = "smollm2-135m"
    # Where `nightlora model prepare` caches converted models (names in `model` resolve here).
    models_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_cache_dir("nightlora", appauthor=False)) / "models")
    adapter_dir: Path = Path("lora-adapter")
    # None = chosen from the data (see nightlora.train.hyperparams); any number set here wins.
    epochs: float | None = Field(None, gt=0)
    iters: int | None = Field(None, ge=1)
    min_iters: int = Field(20, ge=1)
    max_iters: int = Field(1000, ge=1)
    batch_size: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    warmup_fraction: float = Field(0.1, ge=0, le=1)
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    num_layers: int | None = Field(None, ge=1)
    max_seq_length: int = Field(2048, ge=16)
    grad_checkpoint: bool = True
    early_stopping_patience: int = Field(3, ge=0)
    eval_every: int | None = Field(None, ge=1)
    seed: int = 0


class ServerConfig(_Section):
    manager: Literal["process", "launchd", "systemd", "none"] = "process"
    # argv, not a shell string; {model}, {adapter}, {host}, {port} are filled in.
    command: list[str] = Field(
        default_factory=lambda: [
            "{python}", "-m", "mlx_lm", "server",
            "--model", "{model}", "--adapter-path", "{adapter}",
            "--host", "{host}", "--port", "{port}",
        ]
    )
    host: str = "127.0.0.1"
    port: int = Field(8234, ge=1, le=65535)
    label: str = "com.hanni.mlx-server"
    plist: Path = Path("~/Library/LaunchAgents/com.hanni.mlx-server.plist")
    unit: str = "nightlora-server.service"
    stop_during_training: Literal["auto", "always", "never"] = "auto"
    health_timeout: float = Field(120.0, gt=0)
    keep_versions: int = Field(5, ge=1)


class ScheduleConfig(_Section):
    at: str = "03:00"

    @field_validator("at")
    @classmethod
    def _hh_mm(cls, v: str) -> str:
        try:
            hh, mm = v.split(":")
            h, m = int(hh), int(mm)
        except ValueError:
            raise ValueError("must be HH:MM") from None
        if not (0 <= h < 24 and 0 <= m < 60):
            raise ValueError("must be HH:MM")
        return f"{h:02d}:{m:02d}"


class Config(_Section):
    source: SourceConfig = Field(default_factory=SourceConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @property
    def training_path(self) -> Path:
        return self.source.resolve(self.data.training_dir)

    @property
    def adapter_path(self) -> Path:
        return self.source.resolve(self.train.adapter_dir)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a section")
    node[leaf] = value


def _parse_env_value(raw: str) -> Any:
    """Read an environment value as a TOML literal when it is one (10, true, [..]), else as text."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """NIGHTLORA_TRAIN__BACKEND=torch -> {"train.backend": "torch"}."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or "__" not in name:
            continue
        dotted = name[len(ENV_PREFIX):].lower().replace("__", ".")
        out[dotted] = _parse_env_value(raw)
    return out


def _format_errors(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{key}: {msg}")
    return f"invalid config in {where}: " + "; ".join(parts)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid config in {path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the config from defaults, then ``path``, then the environment, then ``overrides``.

    ``path=None`` uses $NIGHTLORA_CONFIG or the user config file when either exists.
    ``overrides`` maps dotted keys ("train.backend") to values; None values are ignored
    so that unset CLI flags do not override anything.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        env_path = environ.get(CONFIG_ENV)
        if env_path:
            path = Path(env_path)
        elif default_config_path().is_file():
            path = default_config_path()
    tree: dict[str, Any] = read_toml(Path(path)) if path is not None else {}
    where = str(path) if path is not None else "defaults"

    try:
        Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, where)) from None

    env = env_overrides(environ)
    for dotted, value in env.items():
        _set_dotted(tree, dotted, value)
    if env:
        try:
            Config.model_validate(tree)
        except ValidationError as e:
            raise ConfigError(_format_errors(e, "environment (NIGHTLORA_*)")) from None

    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, "command-line flags")) from None


PRESETS = ("hanni",)


def preset_toml(name: str) -> str:
    """The config file `nightlora init --preset NAME` writes: every key, with comments."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    c = Config()
    d = c.source.data_dir
    return f"""\
# nightlora config (preset: {name}). Precedence: defaults < this file < NIGHTLORA_SECTION__KEY env < flags.
# Relative paths are inside source.data_dir.

[source]
data_dir = {_toml_str(str(d))}
db = "hanni.db"
system_prompt = "system_prompt.txt"
state_dir = "nightlora"            # runs, adapter store, state db, lock, status.json

[data]
training_dir = "training"
min_feedback = {c.data.min_feedback}                  # rated messages (up or down) needed before a night trains
min_messages = {c.data.min_messages}                   # shorter conversations are not exported
split = [80, 10, 10]               # train / valid / test, by a stable hash of the conversation id

[train]
backend = "auto"                   # auto: mlx on Apple silicon, torch elsewhere
model = "{c.train.model}"
adapter_dir = "lora-adapter"
# epochs, iters, batch_size, learning_rate, num_layers: unset = chosen from the data
min_iters = {c.train.min_iters}
max_iters = {c.train.max_iters}
warmup_fraction = {c.train.warmup_fraction}
lora_rank = {c.train.lora_rank}
lora_alpha = {c.train.lora_alpha}
max_seq_length = {c.train.max_seq_length}
grad_checkpoint = true
early_stopping_patience = {c.train.early_stopping_patience}

[server]
manager = "{"launchd" if sys.platform == "darwin" else "process"}"     # process | launchd | systemd | none (not ours to manage)
host = "{c.server.host}"
port = {c.server.port}
label = "{c.server.label}"
plist = "{c.server.plist}"
stop_during_training = "auto"      # auto | always | never
health_timeout = {c.server.health_timeout}
keep_versions = {c.server.keep_versions}

[schedule]
at = "{c.schedule.at}"
"""


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
