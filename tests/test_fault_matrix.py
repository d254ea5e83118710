"""The fault matrix: every stage boundary of a real `nightlora run`, broken by a real cause.

The cases build on each other (the store's versions, the last good adapter): run the whole
file.  One world for the whole module (a Hanni database, a state folder, one real `mlx_lm server`
on 127.0.0.1 run by the process manager, a tiny model trained with torch), and one case
after another, in file order: each starts `nightlora run` as a process and breaks it --
SIGKILL when the status file shows the stage (no hook in the product: the test watches
status.json, state.db, hanni.db and the store as any other process could), a training
crash, a full disk (RLIMIT_FSIZE on the child with SIGXFSZ ignored, so writes fail with
EFBIG), a server that never answers, a corrupt adapter, a database locked by another
writer beyond the busy timeout, a teacher that hangs -- then runs `nightlora recover` and
checks five invariants.  ``MATRIX`` collects one cell per fault and invariant; the last
test prints it and asserts that every cell holds.

Slow stages are slow for a reason the user could have: the check and export kills run on
a big database (14k conversations, 420k ratings); the commit and record kills happen
while the app holds its database's write lock (the night waits its busy timeout there).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from nightlora.demo.database import build_demo_db
from nightlora.paths import AdapterFiles
from nightlora.pipeline.lock import RunLock
from nightlora.platform.processes import process_identity
from nightlora.state.store import AdapterStore
from nightlora.targets.health import check_health
from server_fixtures import free_port, kill_pid
from teacher_servers import ChatServer

pytestmark = pytest.mark.slow
NIGHTLORA = [sys.executable, "-m", "nightlora"]
# torch in a child on two busy cores: one thread is several times faster than a spinning pool.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

INVARIANTS = {
    "serves": "the server answers a real chat completion with the last good adapter (none when none was live)",
    "no_partial": "no partially written dataset or adapter is used or live",
    "feedback": "feedback consumed only for a promoted adapter (state db cursor, hanni.db exported flags)",
    "lock": "the lock released or cleared as stale; nothing of the run left running",
    "recorded": "the run recorded with its status and a reason (state.db, flywheel_cycles, `nightlora status`)",
}
MATRIX: dict[str, dict[str, str]] = {}   # fault -> invariant -> "ok" | "FAIL: why"
TIMES: dict[str, float] = {}


# ---- the world ----------------------------------------------------------------------------------


def _toml(tree: dict) -> str:
    out = []
    for section, keys in tree.items():
        out.append(f"[{section}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in keys.items() if v is not None]
    return "\n".join(out) + "\n"


def grow_db(db: Path, copies: int, extra_ratings: int) -> None:
    """A big Hanni database: the demo's conversations many times over (each copy's text made its
    own, so nothing is deduplicated away), their ratings unexported, plus ratings of deleted
    conversations (the app keeps them): the check stage reads every rating, export every row."""
    with sqlite3.connect(db) as conn:
        conn.execute(f"""WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {copies})
            INSERT INTO conversations (id, started_at, ended_at, summary, message_count, messages, updated_at)
            SELECT 1000 * n.i + c.id, c.started_at, c.ended_at, c.summary, c.message_count,
                   replace(c.messages, '"user", "', '"user", "#' || n.i || ' '), c.updated_at
            FROM n, conversations c WHERE c.id < 1000""")
        conn.execute(f"""WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {copies})
            INSERT INTO message_feedback (conversation_id, message_index, rating, created_at, exported)
            SELECT 1000 * n.i + f.conversation_id, f.message_index, f.rating, f.created_at, 0
            FROM n, message_feedback f WHERE f.conversation_id < 1000""")
        conn.execute(f"""WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {extra_ratings})
            INSERT INTO message_feedback (conversation_id, message_index, rating, created_at, exported)
            SELECT -n.i, 1, 1, '2030-01-01T00:00:00', 0 FROM n""")


HANG_SERVER = textwrap.dedent("""
    # A server that listens and accepts, and never answers anything (a wedged inference server).
    import socket, sys, time
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(64)
    held = []
    while True:
        held.append(s.accept()[0])
""")


@dataclass
class World:
    root: Path
    db: Path          # the small Hanni database most cases use
    big_db: Path      # the big one (check, export, full disk while writing the dataset)
    state: Path
    model: Path
    port: int
    teachers: list[ChatServer] = field(default_factory=list)
    replies: dict[str | None, str] = field(default_factory=dict)  # version -> the server's greedy reply
    live: str | None = None           # the last good version, as the cases establish it
    corrupt: set[str] = field(default_factory=set)  # versions a case corrupted on purpose
    runs: list[subprocess.Popen] = field(default_factory=list)  # every `nightlora run` started, ended at teardown
    n: int = 0

    def config(self, **sections: dict) -> Path:
        tree: dict[str, dict] = {
            "source": {"data_dir": str(self.db.parent), "state_dir": str(self.state)},
            "data": {"min_feedback": 1},
            "train": {"model": str(self.model), "backend": "torch", "iters": 4, "batch_size": 4,
                      "max_seq_length": 256, "eval_every": 4, "preference": "off", "replay_share": 0},
            # Where the gate is not the point: 4 steps on a tiny random model teach nothing it would accept.
            "eval": {"gate": False},
            "target": {"manager": "process", "port": self.port, "health_timeout": 60, "stop_during_training": "never"},
        }
        for name, keys in sections.items():
            tree.setdefault(name, {}).update(keys)
        self.n += 1
        path = self.root / f"config-{self.n:02d}.toml"
        path.write_text(_toml(tree))
        return path

    @property
    def store(self) -> AdapterStore:
        return AdapterStore(self.state / "adapters")

    def cli(self, cfg: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([*NIGHTLORA, "-c", str(cfg), *args], capture_output=True, text=True, timeout=timeout,
                              env=CHILD_ENV)

    def command(self, cfg: Path, *args: str) -> subprocess.CompletedProcess:
        """A quick command (recover, status) through the CLI's own entry point, in this process:
        the same code as `nightlora ...` without a second of interpreter start each time."""
        import io
        from contextlib import redirect_stderr, redirect_stdout

        from nightlora.cli import main

        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(["--config", str(cfg), *args])
        return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _limit_file_size(limit: int) -> None:
    # In the child before exec: a "full disk" for every file it writes past ``limit`` bytes.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("faults")
    db = root / "hanni" / "hanni.db"
    build_demo_db(db, conversations=24)
    (db.parent / "probe.jsonl").unlink()  # ten generations per model in the gate: not the point here
    big = root / "big" / "hanni.db"
    build_demo_db(big, conversations=24)
    (big.parent / "probe.jsonl").unlink()
    grow_db(big, copies=600, extra_ratings=400_000)
    w = World(root, db, big, root / "state", server_model_dir, free_port())
    base = w.config()
    out = w.cli(base, "server", "start", "--json", timeout=120)
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        w.replies[None] = fingerprint(w)
        yield w
    finally:
        for p in w.runs:  # a case that failed half-way may have left its run going: end it by its pid
            if p.poll() is None:
                kill_pid(p.pid)
        for t in w.teachers:
            t.close()
        stopped = w.cli(base, "server", "stop", timeout=60)
        rec = _server_record(w)
        if rec is not None:  # a stop that failed: end it by its pid
            kill_pid(rec["pid"])
        assert stopped.returncode == 0, stopped.stderr
        from nightlora.platform.net import port_in_use

        assert not port_in_use("127.0.0.1", w.port)


# ---- watching a run from outside ---------------------------------------------------------------


@dataclass
class Run:
    proc: subprocess.Popen
    log: Path
    started: float

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_run(w: World, cfg: Path, *, file_size: int | None = None) -> Run:
    """`nightlora run` as a process in its own process group (so its leftovers can be found)."""
    log = w.root / f"run-{w.n:02d}-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*NIGHTLORA, "-c", str(cfg), "run", "--no-progress"], stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, env=CHILD_ENV, start_new_session=True,
            preexec_fn=(lambda: _limit_file_size(file_size)) if file_size else None,
        )
    w.runs.append(proc)
    return Run(proc, log, time.monotonic())


def status(w: World) -> dict:
    try:
        return json.loads((w.state / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(run: Run, what: str, pred: Callable[[], bool], timeout: float = 240, poll: float = 0.003) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if run.proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {run.proc.returncode}) before {what}:\n{run.output()[-3000:]}")
        time.sleep(poll)
    raise AssertionError(f"{what}: not seen in {timeout} s")


def in_stage(w: World, run: Run, stage: str) -> Callable[[], bool]:
    def pred() -> bool:
        st = status(w)
        return st.get("pid") == run.proc.pid and st.get("state") == "running" and st.get("stage") == stage
    return pred


def kill(run: Run) -> None:
    os.kill(run.proc.pid, signal.SIGKILL)
    run.proc.wait(30)


def finish(run: Run, timeout: float = 300) -> int:
    try:
        return run.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_pid(run.proc.pid)
        raise


@contextlib.contextmanager
def _ro(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only look, as the app or a monitoring script would take one (closed after)."""
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def write_lock(db: Path, kind: str = "IMMEDIATE") -> Iterator[Callable[[], None]]:
    """Another writer holding ``db``'s write lock (the app mid-transaction); yields its release."""
    conn = sqlite3.connect(db, timeout=10, isolation_level=None)
    conn.execute(f"BEGIN {kind}")
    held = [True]

    def release() -> None:
        if held[0]:
            held[0] = False
            conn.execute("ROLLBACK")
            conn.close()
    try:
        yield release
    finally:
        release()


def add_feedback(db: Path) -> list[int]:
    """A new conversation with a thumbs-up and a thumbs-down, unexported; the feedback ids."""
    with sqlite3.connect(db) as conn:
        cid = conn.execute("SELECT max(id) FROM conversations").fetchone()[0] + 1
        msgs = [{"role": "user", "content": f"Remind me what case {cid} was about?"},
                {"role": "assistant", "content": "It was about the fault matrix."},
                {"role": "user", "content": "And what did we decide?"},
                {"role": "assistant", "content": "Nothing yet."}]
        conn.execute("INSERT INTO conversations (id, started_at, ended_at, summary, message_count, messages) "
                     "VALUES (?, '2030-01-01T10:00:00', '2030-01-01T10:05:00', '', 4, ?)", (cid, json.dumps(msgs)))
        ids = []
        for index, rating in ((1, 1), (3, -1)):
            cur = conn.execute("INSERT INTO message_feedback (conversation_id, message_index, rating, created_at, "
                               "exported) VALUES (?, ?, ?, '2030-01-01T10:01:00', 0)", (cid, index, rating))
            ids.append(cur.lastrowid)
    return ids


# ---- the invariants -----------------------------------------------------------------------------


def _server_record(w: World) -> dict | None:
    try:
        return json.loads((w.state / "server.pid").read_text())
    except (OSError, ValueError):
        return None


def whole_safetensors(path: Path) -> bool:
    """The file is as long as its own header says: not truncated, not garbage."""
    try:
        data = path.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return len(data) == 8 + n + end


def check_serves(w: World, expected: set[str | None]) -> str:
    store = w.store
    live = store.current()
    name = live.name if live else None
    if name not in expected:
        return f"FAIL: the store's current is {name}, expected {sorted(map(str, expected))}"
    rec = _server_record(w)
    if rec is None or process_identity(rec["pid"]) != rec["start_time"]:
        return "FAIL: no server process of ours is running"
    argv = rec["argv"]
    served = argv[argv.index("--adapter-path") + 1] if "--adapter-path" in argv else None
    if served != (str(store.current_link) if live else None):
        return f"FAIL: the server was started with --adapter-path {served}, current is {name}"
    if live is not None:  # it was started after `current` last moved (else it serves an older adapter)
        if os.stat(w.state / "server.pid").st_mtime < os.lstat(store.current_link).st_mtime:
            return f"FAIL: the server (started before `current` moved to {name}) serves a stale adapter"
        if name in w.corrupt:
            return f"FAIL: the live {name} is the adapter this case corrupted"
    h = check_health(f"http://127.0.0.1:{w.port}", timeout=60)
    if not h.ok:
        return f"FAIL: not answering: {h.reason}"
    got = fingerprint(w)
    known = w.replies.setdefault(name, got)
    if got != known:
        return f"FAIL: answered {got!r}, but {name or 'the base model'} answers {known!r}"
    w.live = name
    return "ok"


def fingerprint(w: World) -> str:
    """The server's greedy reply with its tokens' log-probabilities: which adapter (if any) answers.
    Four training steps seldom change a tiny model's greedy words; they always move these numbers."""
    import httpx

    r = httpx.post(f"http://127.0.0.1:{w.port}/v1/chat/completions", timeout=60, trust_env=False, json={
        "messages": [{"role": "user", "content": "Reply with one short greeting."}],
        "max_tokens": 6, "temperature": 0, "logprobs": True})
    choice = r.json()["choices"][0]
    return choice["message"]["content"] + " " + " ".join(f"{t['logprob']:.4f}" for t in choice["logprobs"]["content"])


def check_no_partial(w: World, run_id: int | None) -> str:
    store = w.store
    problems = []
    for v in store.list():
        if v.name in w.corrupt:
            continue
        if not v.formats or not (v.path / "version.json").is_file():
            problems.append(f"{v.name} is incomplete")
        for f in [v.path / "adapters.safetensors", v.path / "peft" / "adapter_model.safetensors"]:
            if f.exists() and not whole_safetensors(f):
                problems.append(f"{f.relative_to(w.state)} is cut short")
        runs = _runs(w)
        if v.run_id in runs and runs[v.run_id]["run_dir"]:  # trained on a whole dataset
            manifest = Path(runs[v.run_id]["run_dir"]) / "data" / "manifest.json"
            digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None
            if (v.trainer.get("metrics") or {}).get("manifest_sha256") != digest or digest is None:
                problems.append(f"{v.name} was not trained on its run's whole dataset")
    live = store.current()
    if live is not None and live.name in w.corrupt:
        problems.append(f"the corrupted {live.name} is live")
    if run_id is not None:
        run_dir = Path(_runs(w)[run_id]["run_dir"])
        data = run_dir / "data"
        manifest = data / "manifest.json"
        if manifest.is_file():
            for name, meta in json.loads(manifest.read_text())["files"].items():
                f = data / name
                if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != meta["sha256"]:
                    problems.append(f"{name} does not match the manifest")
        else:
            if (run_dir / "adapter-torch").exists():
                problems.append("an adapter was trained without a whole dataset")
            listed = [p.name for p in data.glob("*.jsonl")] if data.is_dir() else []
            if listed:
                problems.append(f"dataset files without a manifest: {listed}")
        adapter = run_dir / "adapter-torch"
        if adapter.exists() and not (AdapterFiles.format_of(adapter) == "peft"
                                     and whole_safetensors(adapter / "adapter_model.safetensors")):
            problems.append("the run's adapter folder is incomplete")
    return "FAIL: " + "; ".join(problems) if problems else "ok"


def _runs(w: World) -> dict[int, dict]:
    if not (w.state / "state.db").is_file():
        return {}
    with _ro(w.state / "state.db") as conn:
        conn.row_factory = sqlite3.Row
        runs = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM runs")}
        for r in runs.values():
            r["deployed"] = False
        for d in conn.execute("SELECT run_id FROM deploys WHERE action = 'deploy'"):
            if d["run_id"] in runs:
                runs[d["run_id"]]["deployed"] = True
    return runs


def _consumed(w: World) -> dict[str, int]:
    """Consumed feedback id -> the run that consumed it (all sources)."""
    if not (w.state / "state.db").is_file():
        return {}
    with _ro(w.state / "state.db") as conn:
        return {k.partition("@")[0] + "|" + s: r for s, k, r in
                conn.execute("SELECT source, key, run_id FROM consumed_feedback WHERE source NOT LIKE '%#%'")}


def check_feedback(w: World, db: Path, ids: list[int], run_id: int | None, promoted: bool) -> str:
    source = f"hanni:{db.absolute()}"
    consumed = _consumed(w)
    mine = {i: consumed.get(f"{i}|{source}") for i in ids}
    with _ro(db) as conn:
        flags = dict(conn.execute(f"SELECT id, exported FROM message_feedback WHERE id IN ({','.join('?' * len(ids))})",
                                  ids).fetchall())
    problems = []
    if promoted:
        live = w.store.current()
        if not (live and live.run_id == run_id):
            problems.append(f"expected run {run_id}'s adapter live, found {live.name if live else None}")
        if any(r != run_id for r in mine.values()):
            problems.append(f"the promoted run's feedback is not consumed by it: {mine}")
    elif any(r is not None for r in mine.values()):
        problems.append(f"feedback consumed by a run whose adapter was not promoted: {mine}")
    if any(flags[i] and mine[i] is None for i in ids):
        problems.append(f"marked exported in the app but not consumed: {flags}")
    # Whatever was consumed, ever, was consumed by a run whose adapter went live.
    runs = _runs(w)
    with _ro(w.state / "state.db") as conn:
        live_runs = {r for (r,) in conn.execute("SELECT run_id FROM deploys WHERE action = 'deploy' AND outcome = 'live'")}
    stray = {r for r in consumed.values() if r not in live_runs}
    if stray:
        problems.append(f"runs {sorted(stray)} consumed feedback without a live deploy "
                        f"({[runs.get(r, {}).get('status') for r in stray]})")
    return "FAIL: " + "; ".join(problems) if problems else "ok"


def check_lock(w: World, run: Run) -> str:
    if run.proc.poll() is None:
        return "FAIL: the run is still running"
    try:
        os.killpg(run.proc.pid, 0)
        leftover = True
    except ProcessLookupError:
        leftover = False
    if leftover:
        os.killpg(run.proc.pid, signal.SIGKILL)
        return "FAIL: processes of the run's group outlived it"
    try:
        lock = RunLock(w.state / "run.lock").acquire()
    except Exception as e:  # noqa: BLE001 -- the cell says what
        return f"FAIL: the lock cannot be taken: {e}"
    lock.release()
    if (w.state / "run.lock").read_text().strip():
        return "FAIL: the lock file still names a holder"
    st = status(w)
    if st.get("state") == "running":
        return f"FAIL: status.json still says running ({st.get('stage')})"
    return "ok"


def check_recorded(w: World, cfg: Path, db: Path, run_id: int | None, statuses: set[str], reason: str | None) -> str:
    if run_id is None:
        return "FAIL: the run left no record"
    r = _runs(w)[run_id]
    problems = []
    if r["status"] not in statuses or not r["finished_at"] or r["exit_code"] is None:
        problems.append(f"state.db: {r['status']} (exit {r['exit_code']}), expected {sorted(statuses)}")
    if not r["notes"] or (reason and reason.lower() not in r["notes"].lower()):
        problems.append(f"state.db notes {r['notes']!r} do not say {reason!r}")
    if r["hanni_cycle_id"] is None:
        problems.append("no flywheel_cycles row for the run")
    else:
        with _ro(db) as conn:
            row = conn.execute("SELECT status, finished_at, notes FROM flywheel_cycles WHERE id = ?",
                               (r["hanni_cycle_id"],)).fetchone()
        if row is None or row[0] != r["status"] or not row[1] or not row[2]:
            problems.append(f"flywheel_cycles says {row}")
    out = w.command(cfg, "status", "--json")
    shown = {x["id"]: x for x in json.loads(out.stdout)["runs"]} if out.returncode == 0 else {}
    if shown.get(run_id, {}).get("status") != r["status"]:
        problems.append(f"`nightlora status` shows {shown.get(run_id)} (exit {out.returncode} {out.stderr.strip()})")
    return "FAIL: " + "; ".join(problems) if problems else "ok"


@dataclass
class Case:
    """What one fault should leave behind."""

    live: set[str | None]              # acceptable live versions after the fault (and recover)
    statuses: set[str]                 # acceptable final statuses of the faulted run's record
    reason: str | None = None          # words the record's notes must contain
    promoted: bool = False             # the run put its adapter live: its feedback is consumed
    db: Path | None = None


def before_run(w: World) -> int:
    return max(_runs(w), default=0)


def the_run(w: World, after: int) -> int | None:
    new = [i for i in _runs(w) if i > after]
    return max(new) if new else None


def settle(w: World, name: str, run: Run, cfg: Path, ids: list[int], last: int, case: Case,
           recover: Path | None = None) -> dict[str, str]:
    """`nightlora recover` (with ``recover``, the config once the cause is gone), then every invariant."""
    out = w.command(recover or cfg, "recover", "--json")
    db = case.db or w.db
    run_id = the_run(w, last)
    cells = {
        "serves": check_serves(w, case.live) if out.returncode == 0 else f"FAIL: recover exited {out.returncode}: "
                                                                          f"{out.stderr.strip()[-300:]}",
        "no_partial": check_no_partial(w, run_id),
        "feedback": check_feedback(w, db, ids, run_id, case.promoted),
        "lock": check_lock(w, run),
        "recorded": check_recorded(w, cfg, db, run_id, case.statuses, case.reason),
    }
    MATRIX[name] = cells
    TIMES[name] = time.monotonic() - run.started
    return cells


def assert_cells(name: str, run: Run) -> None:
    bad = {k: v for k, v in MATRIX[name].items() if v != "ok"}
    assert not bad, f"{name}: {json.dumps(bad, indent=1)}\n--- run output ---\n{run.output()[-4000:]}"


# ---- the cases, in order (the store's versions grow as they go) ---------------------------------


def test_sigkill_in_check(world: World) -> None:
    w = world
    cfg = w.config(source={"db": str(w.big_db)})
    ids, last = add_feedback(w.big_db), before_run(w)
    run = start_run(w, cfg)
    wait_for(run, "stage check", in_stage(w, run, "check"))
    kill(run)
    settle(w, "SIGKILL in check", run, cfg, ids, last,
           Case({None}, {"interrupted"}, "during check", db=w.big_db))
    assert_cells("SIGKILL in check", run)


def test_sigkill_in_export(world: World) -> None:
    w = world
    cfg = w.config(source={"db": str(w.big_db)})
    ids, last = add_feedback(w.big_db), before_run(w)
    run = start_run(w, cfg)
    wait_for(run, "stage export", in_stage(w, run, "export"))
    time.sleep(0.2)  # into the writing of the files
    kill(run)
    settle(w, "SIGKILL in export", run, cfg, ids, last, Case({None}, {"interrupted"}, "during export", db=w.big_db))
    assert_cells("SIGKILL in export", run)


def test_disk_full_while_writing_the_dataset(world: World) -> None:
    w = world
    cfg = w.config(source={"db": str(w.big_db)})
    ids, last = add_feedback(w.big_db), before_run(w)
    run = start_run(w, cfg, file_size=1 << 20)  # train.jsonl is 5 MB
    assert finish(run) == 5, run.output()
    settle(w, "disk full: dataset", run, cfg, ids, last, Case({None}, {"failed"}, "File too large", db=w.big_db))
    assert_cells("disk full: dataset", run)


def test_control_a_night_without_a_fault(world: World) -> None:
    w = world
    cfg = w.config()
    ids, last = add_feedback(w.db), before_run(w)
    run = start_run(w, cfg)
    assert finish(run) == 0, run.output()
    settle(w, "no fault (control)", run, cfg, ids, last, Case({"v0001"}, {"completed"}, "live", promoted=True))
    assert_cells("no fault (control)", run)
    assert w.replies["v0001"] != w.replies[None]  # the check above can tell an adapter from none


def _teacher(w: World, timeout_s: float) -> dict:
    server = ChatServer(script=["hang"] * 50)
    w.teachers.append(server)
    return {"enabled": True, "kind": "openai", "base_url": f"{server.url}/v1", "model": "teacher",
            "timeout_s": timeout_s, "retries": 0, "count": 4}


def test_sigkill_in_distill_with_a_teacher_that_hangs(world: World) -> None:
    w = world
    cfg = w.config(teacher=_teacher(w, 120))
    ids, last = add_feedback(w.db), before_run(w)
    run = start_run(w, cfg)
    wait_for(run, "stage distill", in_stage(w, run, "distill"))
    wait_for(run, "a request to the teacher", lambda: bool(w.teachers[-1].received))
    kill(run)
    settle(w, "SIGKILL in distill", run, cfg, ids, last, Case({w.live}, {"interrupted"}, "during distill"))
    assert_cells("SIGKILL in distill", run)


def test_a_teacher_that_hangs_is_dropped_and_the_night_goes_on(world: World) -> None:
    w = world
    cfg = w.config(teacher=_teacher(w, 1.0))
    ids, last = add_feedback(w.db), before_run(w)
    run = start_run(w, cfg)
    assert finish(run) == 0, run.output()
    settle(w, "teacher hangs", run, cfg, ids, last, Case({"v0002"}, {"completed"}, "live", promoted=True))
    result = json.loads((Path(_runs(w)[the_run(w, last)]["run_dir"]) / "result.json").read_text())
    assert "did not answer within 1 s" in result["distill"]["teacher_failure"], result["distill"]
    assert_cells("teacher hangs", run)


def test_sigkill_in_train_with_the_server_stopped(world: World) -> None:
    w = world
    # 200 steps: long enough to be killed in (the kill comes at once, so they cost nothing)
    cfg = w.config(target={"stop_during_training": "always"}, train={"iters": 200})
    ids, last = add_feedback(w.db), before_run(w)
    old_server = _server_record(w)
    run = start_run(w, cfg)
    wait_for(run, "stage stop-server", in_stage(w, run, "stop-server"))
    wait_for(run, "training with the server stopped",
             lambda: process_identity(old_server["pid"]) is None and in_stage(w, run, "train")())
    kill(run)
    settle(w, "SIGKILL in train (server down)", run, cfg, ids, last, Case({w.live}, {"interrupted"}, "during train"))
    assert_cells("SIGKILL in train (server down)", run)


def test_training_crash_on_a_corrupt_base_model(world: World) -> None:
    import shutil

    w = world
    broken = w.root / "broken-model"
    shutil.copytree(w.model, broken)
    (weights,) = broken.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    cfg = w.config(train={"model": str(broken)})
    ids, last = add_feedback(w.db), before_run(w)
    run = start_run(w, cfg)
    code = finish(run)
    assert code in (6, 11), run.output()  # training failed / model not usable: its own exit code, not a bug's
    settle(w, "training crash (corrupt model)", run, cfg, ids, last, Case({w.live}, {"failed"}, "cannot load the base model"),
           recover=w.config())
    assert_cells("training crash (corrupt model)", run)


def test_disk_full_while_writing_the_adapter(world: World) -> None:
    w = world
    # rank 64: the adapter is ~540 KB, the dataset's files and the databases stay under 300 KB
    cfg = w.config(train={"lora_rank": 64, "lora_alpha": 128})
    ids, last = add_feedback(w.db), before_run(w)
    run = start_run(w, cfg, file_size=300_000)
    code = finish(run)
    assert code == 6, run.output()
    settle(w, "disk full: adapter", run, cfg, ids, last, Case({w.live}, {"failed"}, "File too large"))
    assert_cells("disk full: adapter", run)


def test_sigkill_in_evaluate(world: World) -> None:
    w = world
    cfg = w.config(eval={"gate": True})
    ids, last = add_feedback(w.db), before_run(w)
    run = start_run(w, cfg)
    wait_for(run, "stage evaluate", in_stage(w, run, "evaluate"))
    time.sleep(0.5)
    kill(run)
    settle(w, "SIGKILL in evaluate", run, cfg, ids, last, Case({w.live}, {"interrupted"}, "during evaluate"))
    assert_cells("SIGKILL in evaluate", run)


def test_state_db_locked_by_another_writer(world: World) -> None:
    w = world
    cfg = w.config()
    ids, last = add_feedback(w.db), before_run(w)
    run = start_run(w, cfg)
    wait_for(run, "stage train", in_stage(w, run, "train"))
    with write_lock(w.state / "state.db", "EXCLUSIVE"):
        code = finish(run)  # held until the run gave up: far longer than its busy timeout
    assert code == 14, run.output()
    settle(w, "state.db locked", run, cfg, ids, last, Case({w.live}, {"failed"}, "locked"))
    assert_cells("state.db locked", run)


def test_sigkill_in_deploy_with_the_server_down(world: World) -> None:
    w = world
    cfg = w.config()
    ids, last = add_feedback(w.db), before_run(w)
    old_server = _server_record(w)
    run = start_run(w, cfg)
    wait_for(run, "stage deploy", in_stage(w, run, "deploy"))
    wait_for(run, "the old server stopped", lambda: process_identity(old_server["pid"]) is None)
    kill(run)
    before = w.live
    new = f"v{int(before[1:]) + 1:04d}" if before else "v0001"
    # The new version was checked and set current before the kill: recover may serve it (it passes health
    # now) or the one before; either way what serves is what `current` says, and nothing is consumed.
    settle(w, "SIGKILL in deploy (server down)", run, cfg, ids, last, Case({before, new}, {"interrupted"},
                                                                              "during deploy"))
    assert_cells("SIGKILL in deploy (server down)", run)


def test_a_server_that_never_answers(world: World) -> None:
    w = world
    script = w.root / "hang_server.py"
    script.write_text(HANG_SERVER)
    cfg = w.config(target={"command": ["{python}", str(script), "{host}", "{port}", "--adapter-path", "{adapter}"],
                           "health_timeout": 1})
    ids, last = add_feedback(w.db), before_run(w)
    run = start_run(w, cfg)
    code = finish(run)
    assert code == 8, run.output()
    # recover waits its health timeout on the wedged server, then starts mlx_lm (ready in 3-9 s on two
    # busy cores): the one timeout serves both
    fixed = w.config(target={"health_timeout": 15})
    settle(w, "server never healthy", run, cfg, ids, last, Case({w.live}, {"failed"}, "not healthy"), recover=fixed)
    assert_cells("server never healthy", run)


def test_sigkill_in_commit_while_the_app_holds_its_database(world: World) -> None:
    w = world
    cfg = w.config()
    ids, last = add_feedback(w.db), before_run(w)
    run = start_run(w, cfg)
    wait_for(run, "stage deploy", in_stage(w, run, "deploy"))
    with write_lock(w.db):
        # the cursor is written (state.db), the app's flags wait for the lock: kill there
        wait_for(run, "the feedback consumed", lambda: all(f"{i}|hanni:{w.db.absolute()}" in _consumed(w) for i in ids),
                 poll=0.02)
        kill(run)
    # the adapter went live before the kill: its feedback is consumed, the run says where it stopped
    settle(w, "SIGKILL in commit", run, cfg, ids, last,
           Case({_next_version(w)}, {"interrupted"}, "during commit", promoted=True))
    assert_cells("SIGKILL in commit", run)


def _next_version(w: World) -> str:
    v = w.store.list()
    return v[-1].name if v else "v0001"


def _flags(db: Path, ids: list[int]) -> list[int]:
    with _ro(db) as conn:
        return [r[0] for r in conn.execute(f"SELECT exported FROM message_feedback WHERE id IN "
                                           f"({','.join('?' * len(ids))})", ids)]


def test_sigkill_in_record_while_the_app_holds_its_database(world: World) -> None:
    w = world
    cfg = w.config()
    ids, last = add_feedback(w.db), before_run(w)
    run = start_run(w, cfg)
    wait_for(run, "stage commit", in_stage(w, run, "commit"))
    wait_for(run, "the feedback marked in the app", lambda: all(_flags(w.db, ids)), poll=0.002)
    with write_lock(w.db):  # the app's cycle record now waits for the lock; the night's own is written
        wait_for(run, "the run recorded in state.db",
                 lambda: _runs(w)[the_run(w, last)]["status"] != "running", poll=0.02)
        kill(run)
    settle(w, "SIGKILL in record", run, cfg, ids, last, Case({_next_version(w)}, {"completed"}, "live", promoted=True))
    assert_cells("SIGKILL in record", run)


def test_app_database_locked_at_the_start(world: World) -> None:
    w = world
    cfg = w.config()
    ids, last = add_feedback(w.db), before_run(w)
    with write_lock(w.db) as release:
        run = start_run(w, cfg)
        wait_for(run, "stage check", in_stage(w, run, "check"), timeout=60)  # after the busy timeout
        release()
        code = finish(run)
    assert code == 0, run.output()
    settle(w, "hanni.db locked", run, cfg, ids, last, Case({_next_version(w)}, {"completed"}, "live", promoted=True))
    assert_cells("hanni.db locked", run)


def test_corrupt_live_adapter_and_a_failed_night_with_the_server_stopped(world: World) -> None:
    w = world
    store = w.store
    live = store.current()
    assert live is not None and store.previous() is not None
    previous = store.previous().name
    (live.path / "adapters.safetensors").write_bytes(b"\xff" * 64)  # the disk lost it
    w.corrupt.add(live.name)
    cfg = w.config(target={"stop_during_training": "always"}, train={"learning_rate": 1e12})
    ids, last = add_feedback(w.db), before_run(w)
    run = start_run(w, cfg)
    assert finish(run) == 6, run.output()  # diverged; the server came back on the version before the corrupt one
    settle(w, "corrupt live adapter", run, cfg, ids, last, Case({previous}, {"failed"}, "loss is nan"))
    assert_cells("corrupt live adapter", run)


# ---- the matrix --------------------------------------------------------------------------------


def render_matrix() -> str:
    cols = list(INVARIANTS)
    width = max([len(f) for f in MATRIX] + [5])
    lines = ["", "fault matrix (faults x invariants):", f"{'fault':<{width}}  " + "  ".join(f"{c:<10}" for c in cols)
             + "  time"]
    for fault, cells in MATRIX.items():
        lines.append(f"{fault:<{width}}  " + "  ".join(f"{('ok' if cells[c] == 'ok' else 'FAIL'):<10}" for c in cols)
                     + f"  {TIMES.get(fault, 0):4.0f}s")
    for fault, cells in MATRIX.items():
        for c, v in cells.items():
            if v != "ok":
                lines.append(f"  {fault} / {c}: {v}")
    lines += [f"  {c}: {text}" for c, text in INVARIANTS.items()]
    return "\n".join(lines)


def test_the_matrix_holds(capsys: pytest.CaptureFixture) -> None:
    with capsys.disabled():
        print(render_matrix())
    assert MATRIX, "no fault case ran"
    assert all(v == "ok" for cells in MATRIX.values() for v in cells.values()), render_matrix()
