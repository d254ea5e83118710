"""Config: defaults < TOML file < environment < flags, every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from nightlora.config import Config, env_overrides, load_config, preset_toml
from nightlora.errors import ConfigError


@pytest.fixture(autouse=True)
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults():
    c = load_config(None, environ={})
    assert c == Config()
    assert (c.data.min_feedback, c.data.min_messages, c.data.split) == (10, 4, (80, 10, 10))
    assert c.source.db_path == c.source.data_dir / "hanni.db"


def test_file_then_environment_then_flags(tmp_path: Path):
    path = write(tmp_path, "[data]\nmin_feedback = 5\nmin_messages = 6\n[train]\nbackend = \"mlx\"\n")
    env = {"NIGHTLORA_DATA__MIN_FEEDBACK": "7", "NIGHTLORA_TRAIN__BACKEND": "torch"}
    c = load_config(path, environ=env, overrides={"data.min_feedback": 9, "data.min_messages": None})
    assert (c.data.min_feedback, c.data.min_messages, c.train.backend) == (9, 6, "torch")


def test_config_path_from_the_environment(tmp_path: Path):
    path = write(tmp_path, "[data]\nmin_feedback = 2\n")
    assert load_config(None, environ={"NIGHTLORA_CONFIG": str(path)}).data.min_feedback == 2


def test_environment_values_are_toml_literals_or_text():
    env = {
        "NIGHTLORA_DATA__SPLIT": "[70, 20, 10]", "NIGHTLORA_TARGET__HOST": "localhost",
        "NIGHTLORA_TRAIN__GRAD_CHECKPOINT": "false", "OTHER": "x", "NIGHTLORA_NOSECTION": "x",
    }
    assert env_overrides({**env, "NIGHTLORA_CONFIG": "a path, not a key"}) == {
        "data.split": [70, 20, 10], "target.host": "localhost", "train.grad_checkpoint": False,
    }
    c = load_config(None, environ=env)
    assert (c.data.split, c.target.host, c.train.grad_checkpoint) == ((70, 20, 10), "localhost", False)


def test_every_problem_in_a_file_in_one_line(tmp_path: Path):
    path = write(tmp_path, "[data]\nmin_feedback = -1\nsplit = [50, 10, 10]\ncolour = 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for key in ("data.min_feedback", "data.split", "data.colour: unknown key"):
        assert key in msg


def test_bad_environment_and_flags_say_where(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"environment \(NIGHTLORA_\*\): data.min_messages"):
        load_config(None, environ={"NIGHTLORA_DATA__MIN_MESSAGES": "many"})
    with pytest.raises(ConfigError, match="command-line flags: schedule.at"):
        load_config(None, environ={}, overrides={"schedule.at": "25:00"})
    with pytest.raises(ConfigError, match="data.min_feedback.x: min_feedback is not a section"):
        load_config(write(tmp_path, "[data]\nmin_feedback = 5\n"), environ={}, overrides={"data.min_feedback.x": 1})


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="invalid config"):
        load_config(write(tmp_path, "[data\n"), environ={})


def test_relative_paths_resolve_in_the_data_dir_and_absolute_ones_stay(tmp_path: Path):
    path = write(tmp_path, f'[source]\ndata_dir = "{tmp_path}"\ndb = "sub/h.db"\nsystem_prompt = "/etc/prompt.txt"\n')
    c = load_config(path, environ={})
    assert c.source.db_path == tmp_path / "sub" / "h.db"
    assert c.source.system_prompt_path == Path("/etc/prompt.txt")
    assert c.training_path == tmp_path / "training"
    home = load_config(None, environ={}, overrides={"source.db": "~/x.db"})
    assert home.source.db_path == Path.home() / "x.db"


def test_schedule_time_is_normalized():
    assert load_config(None, environ={}, overrides={"schedule.at": "3:05"}).schedule.at == "03:05"


def test_hanni_preset_with_db_puts_the_app_folder_where_the_database_is(tmp_path: Path):
    db = tmp_path / "Application Support" / "Hanni 2" / "hanni-copy.db"
    c = load_config(write(tmp_path, preset_toml("hanni", db=db)), environ={})
    assert c.source.db_path == db
    assert c.source.state_path == db.parent / "nightlora"


def test_preset_round_trips_to_the_defaults(tmp_path: Path):
    c = load_config(write(tmp_path, preset_toml("hanni")), environ={})
    d = Config()
    assert (c.data, c.train, c.schedule) == (d.data, d.train, d.schedule)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_toml("other")


def test_keys_of_earlier_versions_say_what_to_do(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"server: the \[server\] section is now \[target\]"):
        load_config(write(tmp_path, "[server]\nport = 1\n"), environ={})
    with pytest.raises(ConfigError, match="train.adapter_dir: no longer used"):
        load_config(write(tmp_path, "[train]\nadapter_dir = \"lora-adapter\"\n"), environ={})


def test_each_kind_has_its_own_keys(tmp_path: Path):
    c = load_config(write(tmp_path, "[target]\nkind = \"none\"\nurl = \"http://127.0.0.1:9\"\n"), environ={})
    assert c.target.kind == "none" and c.target.url == "http://127.0.0.1:9"
    assert Config().target.kind == "mlx_lm" and Config().source.kind == "hanni"
    with pytest.raises(ConfigError, match="target.port: unknown key"):  # a key of another kind
        load_config(write(tmp_path, "[target]\nkind = \"none\"\nport = 1\n"), environ={})
    with pytest.raises(ConfigError, match="target: kind must be one of: mlx_lm, none"):
        load_config(write(tmp_path, "[target]\nkind = \"tgi\"\n"), environ={})
