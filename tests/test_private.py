"""Private data stays private: servers on loopback, adapters only from safetensors, and
permission problems as another user.  (Owner-only files under umask 000 and no message text in
logs are checked on a whole night in test_odd_paths.py.)

Real `nightlora` subprocesses.  CI runs as root: the permission cases run the child as uid 65534
(setpriv), where root's own rights would hide them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from nightlora.cli.wiring import build_target
from nightlora.config import Config
from nightlora.demo.database import build_demo_db

NIGHTLORA = [sys.executable, "-m", "nightlora"]


def child_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTLORA_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"),
               XDG_CACHE_HOME=str(home / "cache"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def nightlora(*args: str, env: dict[str, str], umask: int | None = None, prefix: tuple[str, ...] = (),
              timeout: float = 180) -> subprocess.CompletedProcess:
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([*prefix, *NIGHTLORA, *args], capture_output=True, text=True, env=env,
                          preexec_fn=preexec, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if line.startswith("nightlora:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_the_managed_servers_bind_to_loopback_unless_configured(tmp_path: Path) -> None:
    base = {"source": {"data_dir": str(tmp_path)}, "train": {"model": str(tmp_path)}}

    def host_of(argv: list[str]) -> str:
        return argv[argv.index("--host") + 1]

    for manager in ("process", "launchd", "systemd"):
        t = build_target(Config.model_validate({**base, "target": {"manager": manager}}))
        assert host_of(t.manager.command.argv(None)) == "127.0.0.1", manager  # what each manager runs
    vllm = build_target(Config.model_validate({**base, "target": {"kind": "vllm"}}))
    assert host_of(vllm.server.argv()) == "127.0.0.1"   # vLLM itself
    assert host_of(vllm.proxy.argv()) == "127.0.0.1"    # the model-name proxy the app talks to
    # "unless the config says otherwise"
    t = build_target(Config.model_validate({**base, "target": {"host": "0.0.0.0"}}))
    assert host_of(t.manager.command.argv(None)) == "0.0.0.0"
    v = build_target(Config.model_validate({**base, "target": {"kind": "vllm", "host": "::", "vllm_host": "10.0.0.2"}}))
    assert (host_of(v.proxy.argv()), host_of(v.server.argv())) == ("::", "10.0.0.2")


def pickled_adapter(folder: Path, *, peft: bool = True) -> Path:
    """An adapter folder as an older tool leaves it: config plus pickled weights, no safetensors."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    (folder / ("adapter_model.bin" if peft else "adapters.npz")).write_bytes(b"\x80\x04pickle, never loaded")
    return folder


def test_adapters_load_only_from_safetensors(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = child_env(tmp_path / "home")
    data = tmp_path / "hanni"
    build_demo_db(data / "hanni.db", conversations=20)
    store = data / "nightlora" / "adapters"
    version = store / "v0001"
    pickled_adapter(version / "peft")
    shutil.copy(version / "peft" / "adapter_config.json", version / "adapter_config.json")
    (version / "adapters.bin").write_bytes(b"pickle")
    (store / "current").symlink_to("v0001")
    cfg = tmp_path / "nightlora.toml"
    cfg.write_text(f'[source]\ndata_dir = {json.dumps(str(data))}\n[train]\nmodel = {json.dumps(str(tiny_model_dir))}\n'
                   'backend = "torch"\n[target]\nkind = "none"\n')
    # rolling back to it: refused before the pointer moves
    r = nightlora("--config", str(cfg), "rollback", "v0001", env=env)
    one_line_error(r, 13, "v0001", "safetensors")
    # continuing training from it (PEFT would unpickle adapter_model.bin)
    assert nightlora("--config", str(cfg), "export", "--out", str(tmp_path / "data"), env=env).returncode == 0
    r = nightlora("--config", str(cfg), "train", "--data", str(tmp_path / "data"), "--init-adapter",
                  str(version / "peft"), "--out", str(tmp_path / "out"), "--iters", "1", env=env)
    one_line_error(r, 6, "adapter_model.safetensors", "safetensors")
    assert not (tmp_path / "out").exists()
    # the evaluation's scorer, asked to load it, refuses too
    from nightlora.errors import ModelError
    from nightlora.train.torch.scorer import TorchScorer

    scorer = TorchScorer(tiny_model_dir)
    with pytest.raises(ModelError, match="adapters load only from safetensors"):
        scorer.use(version / "peft")


# --- as an unprivileged user ---------------------------------------------------------------

SETPRIV = shutil.which("setpriv")
NOBODY = 65534


@dataclass(frozen=True)
class Unprivileged:
    """How the child runs without the right to override file permissions, and the modes that keep
    it out: as uid 65534, root's own (0600/0700) shuts it out and 0755/0644 lets it only read; as
    root without capabilities (when uid 65534 cannot read this checkout, as under a 0700 CI
    folder) only the owner bits count: a shut file or folder is 0000, a read-only folder 0555, and
    nothing can belong to someone else (an owner may always chmod its own folder)."""
    prefix: tuple[str, ...]
    root: Path
    closed_file: int
    closed_dir: int
    read_only_dir: int
    read_only_file: int
    other_owner: bool


NO_CAPS = ("--securebits=+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked",
           "--bounding-set=-all", "--inh-caps=-all")


@pytest.fixture
def nobody(tmp_path: Path):
    root = Path(tempfile.mkdtemp(prefix="nightlora-perm-"))
    os.chmod(root, 0o755)
    if os.geteuid() != 0:
        tries = [Unprivileged((), root, 0o000, 0o000, 0o555, 0o444, False)]
    elif SETPRIV is None:
        pytest.fail("running as root without setpriv (util-linux): cannot drop the child's privileges")
    else:
        tries = [Unprivileged((SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"), root,
                              0o600, 0o700, 0o755, 0o644, True),
                 Unprivileged((SETPRIV, *NO_CAPS), root, 0o000, 0o000, 0o555, 0o444, False)]
    errors = []
    for way in tries:
        probe = subprocess.run([*way.prefix, *NIGHTLORA, "--version"], capture_output=True, text=True, cwd=root)
        if probe.returncode == 0:
            break
        errors.append(probe.stderr.strip()[-200:])
    else:
        shutil.rmtree(root)
        pytest.fail("cannot run nightlora without privileges: " + " | ".join(errors))
    yield way
    for p in root.rglob("*"):  # what the test shut, opened again for rmtree
        with contextlib.suppress(OSError):
            os.chmod(p, 0o700 if p.is_dir() else 0o600)
    shutil.rmtree(root, ignore_errors=True)


def test_permission_problems_are_one_line_errors_as_another_user(nobody) -> None:
    way: Unprivileged = nobody
    prefix, root = way.prefix, way.root
    home = root / "home"
    home.mkdir(mode=0o777)
    os.chmod(home, 0o777)
    env = child_env(home)
    data = root / "Hanni"
    build_demo_db(data / "hanni.db", conversations=20)
    for p in [data, *data.iterdir()]:
        os.chmod(p, way.read_only_dir if p.is_dir() else way.read_only_file)  # it may read, not write
    cfg = root / "nightlora.toml"
    cfg.write_text(f'[source]\ndata_dir = {json.dumps(str(data))}\n[target]\nkind = "none"\n')
    os.chmod(cfg, 0o644)

    def run(*args: str) -> subprocess.CompletedProcess:
        return nightlora("--config", str(cfg), *args, env=env, prefix=prefix, timeout=120)

    # a data folder it may not write: nightlora's state folder cannot be made there
    one_line_error(run("run"), 14, "state folder", str(data / "nightlora"))
    # an output folder under one it may not write
    one_line_error(run("export", "--out", str(data / "out")), 5, str(data / "out"))
    # the database it may not read
    os.chmod(data / "hanni.db", way.closed_file)
    one_line_error(run("check"), 4, str(data / "hanni.db"), "permission denied")
    os.chmod(data / "hanni.db", way.read_only_file)
    # nightlora's state folder belongs to someone else (root, 0700)
    if way.other_owner:
        (data / "nightlora").mkdir(mode=0o700)
        one_line_error(run("run"), 14, str(data / "nightlora"))
        one_line_error(run("recover"), 14, "run.lock")
    # a config file it may not read
    os.chmod(cfg, way.closed_file)
    one_line_error(run("check"), 3, str(cfg))
    os.chmod(cfg, 0o644)
    # a model folder it may not enter
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    os.chmod(model, way.closed_dir)
    dataset = root / "dataset"
    dataset.mkdir(mode=0o755)
    line = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    for split in ("train", "valid"):
        (dataset / f"{split}.jsonl").write_text(json.dumps(line) + "\n")
        os.chmod(dataset / f"{split}.jsonl", 0o644)
    one_line_error(run("train", "--data", str(dataset), "--model", str(model), "--dry-run"), 11, str(model))
