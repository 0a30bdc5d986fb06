"""The runner's whole behaviour on every executor, against real components.

Each flow is written to a fresh folder with its task code in a module beside it (named uniquely,
so that nothing but the flow's own folder can provide it) and run by the real command,
`python -m flowspec run flow.yaml --format json`, in a child process; a few tests use FlowRunner
in this process where the command cannot show what they check (result objects, the state
notifications observers get).

Executors: `local`; `local-dask` with threads and with processes; `dask` on a real scheduler and
real workers started by the `dask_cluster` fixture (their working directory is an empty folder of
their own: the code beside the spec reaches them by value or not at all); `dask` without an
address (a temporary local cluster that lives for the run).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

# -- executors ---------------------------------------------------------------------------------------
EXECUTORS = [
    pytest.param("local", id="local"),
    pytest.param("threads", id="local-dask-threads"),
    pytest.param("processes", id="local-dask-processes"),
    pytest.param("dask", id="dask-cluster", marks=pytest.mark.integration),
    pytest.param("dask-temp", id="dask-temporary-cluster", marks=pytest.mark.integration),
]
OUT_OF_PROCESS = [p for p in EXECUTORS if p.values[0] in ("processes", "dask", "dask-temp")]


def executor_yaml(kind: str, request) -> str:
    if kind == "dask":
        return f"{{type: dask, address: '{request.getfixturevalue('dask_cluster').address}'}}"
    if kind == "dask-temp":
        pytest.importorskip("distributed", reason="the dask executor needs `pip install dask[distributed]`")
    return {"local": "{type: local}",
            "threads": "{type: local-dask, scheduler: threads, workers: 6}",
            "processes": "{type: local-dask, scheduler: processes, workers: 4}",
            "dask-temp": "{type: dask, workers: 2, threads: 2}"}[kind]


@dataclass(frozen=True)
class Traits:
    """Where executors differ on purpose.

    in_process:  task code runs in the process of `flowspec run`.
    stray:       a timed-out attempt goes on running in the background. Python cannot stop a
                 thread: on a pool of threads and on Dask workers (threads too) the attempt is
                 marked TimedOut on time and its thread finishes on its own; the `local`
                 executor interrupts its main thread and the `processes` pool kills the child.
    worker_env:  `environment.env` is in the task's `os.environ`. It is applied in the process
                 that runs the flow, and processes the run starts inherit it; the long-lived
                 workers of a shared Dask cluster are not changed by a flow run (one run must not
                 set variables for the others they serve): `${{ env.NAME }}` references, resolved
                 where the flow runs, carry the values to them.
    A task's print() is a log line of its task run on every executor (a shared cluster's
    workers send it back as they send the task's other log lines).
    """

    in_process: bool
    stray: bool
    worker_env: bool


TRAITS = {
    "local": Traits(in_process=True, stray=False, worker_env=True),
    "threads": Traits(in_process=True, stray=True, worker_env=True),
    "processes": Traits(in_process=False, stray=False, worker_env=True),
    "dask": Traits(in_process=False, stray=True, worker_env=False),
    "dask-temp": Traits(in_process=False, stray=True, worker_env=True),
}


# -- running `flowspec run` ---------------------------------------------------------------------------
@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    pid: int
    folder: Path

    @property
    def report(self) -> dict:
        """The JSON report: stdout must hold exactly one JSON document and nothing else."""
        try:
            return json.loads(self.stdout)
        except ValueError as exc:
            raise AssertionError(f"stdout is not one JSON document ({exc}):\n{self.stdout}\n{self.stderr}") from None

    def task(self, name: str) -> dict:
        return self.report["tasks"][name]


def _env(folder: Path) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)  # pytest's warning filters must not leak into the child
    env["FLOWSPEC_HOME"] = str(folder / ".flowspec")  # the run's record goes to a backend of its own
    return env


def start_run(folder: Path) -> subprocess.Popen:
    """`flowspec run flow.yaml --format json` in `folder`, in the background."""
    # The child must take SIGINT as Ctrl-C. An ignored SIGINT is inherited across exec (a shell
    # that starts tests in the background ignores it), a handled one is reset to the default:
    # for the moment of starting the child, handle it here.
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-m", "flowspec", "run", "flow.yaml", "--param", f"d={folder}",
                                 "--format", "json"], cwd=folder, env=_env(folder), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def finish_run(proc: subprocess.Popen, folder: Path, timeout: float = 90, seen: bytes = b"") -> Run:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # only when the test already failed: leave no process behind
            proc.kill()
            proc.communicate()
    return Run(proc.returncode, out.decode(), (seen + err).decode(), proc.pid, folder)


def run_flow(folder: Path, timeout: float = 90) -> Run:
    return finish_run(start_run(folder), folder, timeout)


def read_until(proc: subprocess.Popen, needles: list[str], timeout: float) -> bytes:
    """Read the child's stderr (raw bytes, that select sees) until every one of `needles` showed up."""
    deadline, seen = time.monotonic() + timeout, b""
    while (left := deadline - time.monotonic()) > 0 and select.select([proc.stderr], [], [], left)[0]:
        chunk = os.read(proc.stderr.fileno(), 65536)
        if not chunk:
            break
        seen += chunk
        if all(needle.encode() in seen for needle in needles):
            return seen
    raise AssertionError(f"not all of {needles} on stderr within {timeout}s: {seen.decode()}")


def write_flow(folder: Path, spec: str, code: str, executor: str) -> str:
    """flow.yaml and its task module (a name no other folder provides) in `folder`; returns the
    module's name."""
    module = f"fsx_tasks_{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(code, encoding="utf-8")
    (folder / "flow.yaml").write_text(spec.replace("MOD", module) + f"executor: {executor}\n", encoding="utf-8")
    return module


def logged(stderr: str, label: str, message: str, level: str = "INFO ") -> bool:
    """Whether stderr has the line `HH:MM:SS.mmm LEVEL   label | message` (label, message: regexes)."""
    line = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} " + level + r" +" + label + r" \| " + message + "$")
    return any(line.match(ln) for ln in stderr.splitlines())


def shape(task: dict) -> tuple:
    return task["state"], task["attempts"], task["children"], task["message"]


# -- one flow with every behaviour, run once per executor -----------------------------------------------
TASKS = '''
import os, sys, time
from dataclasses import dataclass

from flowspec import context


@dataclass
class Point:
    x: int
    y: int


def _path(name):
    return os.path.join(context.params["d"], name)


def _bump(name):
    """A call counter in a file: the attempts of a task may run in different processes."""
    path = _path(name)
    n = 1
    if os.path.exists(path):
        with open(path) as fh:
            n += int(fh.read())
    with open(path, "w") as fh:
        fh.write(str(n))
    return n


def _touch(name):
    open(_path(name), "w").close()


def nums():
    return [1, 2, 3]


def point():
    return Point(3, 4)


def flag():
    return True


def nothing():
    return None


def values():
    return {"tup": (1, "a"), "half": 0.5, "nested": {"k": [1, {"z": None}]}}


def check(lst, pt, flag, nothing, values, n, text):
    assert lst == [1, 2, 3] and type(lst) is list, repr(lst)
    assert pt == Point(3, 4) and isinstance(pt, Point), repr(pt)
    assert flag is True and nothing is None and n == 2, (flag, nothing, n)
    assert values == {"tup": (1, "a"), "half": 0.5, "nested": {"k": [1, {"z": None}]}}, repr(values)
    assert type(values["tup"]) is tuple, repr(values)
    assert text == "n=2 nums=[1, 2, 3] flag=true nothing=<> pt=Point(x=3, y=4)", repr(text)


def add(a, b=0):
    return a + b


def pair(a, b):
    return f"{a}{b}"


def expect(got, want):
    assert got == want, f"{got!r} != {want!r}"


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad {x}")
    return x


def flaky():
    n = _bump("flaky.count")
    if n < 3:
        raise ConnectionError(f"call {n}")
    return n


def always_fails():
    raise ConnectionError(f"call {_bump('exhausted.count')}")


def slow(seconds):
    time.sleep(seconds)
    _touch("slow.done")  # only if this attempt was not stopped at its timeout


def probe(seconds):
    """Wait until the timed-out attempt of `slow` would have finished (or did)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not os.path.exists(_path("slow.done")):
        time.sleep(0.02)


def mark():
    _touch(context.task_name + ".ran")


def where():
    context.logger.info("pid=%d cwd=%s", os.getpid(), os.getcwd())


def env(ref, fallback):
    context.logger.info("environ=%s ref=%s fallback=%s", os.environ.get("FSX_GREETING", "<unset>"), ref, fallback)


def show_context(item):
    context.logger.info("run=%s flow=%s task=%s index=%s attempt=%s n=%s", context.run_id, context.flow_name,
                        context.task_name, context.map_index, context.attempt, context.params["n"])
    if item == "b" and context.attempt == 1:
        raise RuntimeError("first attempt of b fails")
    return item


def exits():
    sys.exit(3)


def started():
    _touch("on_start.ran")


def finished(run):
    import json

    with open(_path("on_exit.json"), "w") as fh:
        json.dump({"state": run["state"], "tasks": {n: t["state"] for n, t in run["tasks"].items()}}, fh)
'''

FLOW = """\
version: 1
name: behaviours
parameters:
  d: {type: string}
  n: {type: integer, default: 2}
  items: {type: array, default: [1, 2, 3]}
  empty: {type: array, default: []}
tasks:
  nums: {run: "MOD:nums"}
  point: {run: "MOD:point"}
  flag: {run: "MOD:flag"}
  nothing: {run: "MOD:nothing"}
  values: {run: "MOD:values"}
  check:
    run: "MOD:check"
    with:
      lst: ${{ tasks.nums }}
      pt: ${{ tasks.point }}
      flag: ${{ tasks.flag }}
      nothing: ${{ tasks.nothing }}
      values: ${{ tasks.values }}
      n: ${{ params.n }}
      text: "n=${{ params.n }} nums=${{ tasks.nums }} flag=${{ tasks.flag }} nothing=<${{ tasks.nothing }}> pt=${{ tasks.point }}"
  zipped: {run: "MOD:add", map: {a: "${{ params.items }}", b: [10, 20, 30]}}
  zipped_seen: {run: "MOD:expect", with: {got: "${{ tasks.zipped }}", want: [11, 22, 33]}}
  over_list: {run: "MOD:add", map: {a: "${{ tasks.nums }}"}, with: {b: 1}}
  over_list_seen: {run: "MOD:expect", with: {got: "${{ tasks.over_list }}", want: [2, 3, 4]}}
  empty: {run: "MOD:add", map: {a: "${{ params.empty }}"}}
  empty_seen: {run: "MOD:expect", with: {got: "${{ tasks.empty }}", want: []}}
  unequal: {run: "MOD:pair", map: {a: "${{ params.items }}", b: [1]}}
  one_bad: {run: "MOD:fail_on", map: {x: "${{ params.items }}"}, with: {bad: 2}}
  child_to_child: {run: "MOD:add", map: {a: "${{ tasks.one_bad }}"}, with: {b: 100}}
  gather:
    run: "MOD:expect"
    with: {got: "${{ tasks.child_to_child }}", want: [101, null, 103]}
    trigger: all_finished
  flaky: {run: "MOD:flaky", retries: 3, retry_delay: 200ms}
  exhausted: {run: "MOD:always_fails", retries: 1, retry_delay: 100ms}
  slow: {run: "MOD:slow", with: {seconds: 1.5}, timeout: 250ms}
  probe: {run: "MOD:probe", with: {seconds: 2.0}, after: [slow], trigger: all_finished}
  alert: {run: "MOD:mark", after: [nums, slow], trigger: any_failed}
  no_alert: {run: "MOD:mark", after: [nums], trigger: any_failed}
  after_skip: {run: "MOD:mark", after: [no_alert]}
  blocked: {run: "MOD:mark", after: [slow]}
  env: {run: "MOD:env", with: {ref: "${{ env.FSX_GREETING }}", fallback: "${{ env.FSX_SURELY_UNSET || 'dflt' }}"}}
  ctx: {run: "MOD:show_context", map: {item: [a, b]}, retries: 1}
  where: {run: "MOD:where"}
  exits: {run: "MOD:exits"}
  survivor: {run: "MOD:mark", after: [exits], trigger: all_finished}
environment:
  env: {FSX_GREETING: hi}
  on_start: "MOD:started"
  on_exit: "MOD:finished"
"""

EXPECTED = {
    "nums": ("Success", 1, {}, None),
    "point": ("Success", 1, {}, None),
    "flag": ("Success", 1, {}, None),
    "nothing": ("Success", 1, {}, None),
    "values": ("Success", 1, {}, None),
    "check": ("Success", 1, {}, None),
    "zipped": ("Success", 3, {"Success": 3}, None),
    "zipped_seen": ("Success", 1, {}, None),
    "over_list": ("Success", 3, {"Success": 3}, None),
    "over_list_seen": ("Success", 1, {}, None),
    "empty": ("Success", 0, {}, None),
    "empty_seen": ("Success", 1, {}, None),
    "unequal": ("Failed", 0, {}, "mapped arguments have different lengths (a=3, b=1); they are zipped and must match"),
    "one_bad": ("Failed", 3, {"Success": 2, "Failed": 1}, "[1] ValueError: bad 2"),
    "child_to_child": ("TriggerFailed", 2, {"Success": 2, "TriggerFailed": 1},
                       "[1] upstream did not succeed: one_bad[1] (Failed)"),
    "gather": ("Success", 1, {}, None),
    "flaky": ("Success", 3, {}, None),
    "exhausted": ("Failed", 2, {}, "ConnectionError: call 2"),
    "slow": ("TimedOut", 1, {}, "attempt 1 exceeded the timeout of 0.25s"),
    "probe": ("Success", 1, {}, None),
    "alert": ("Success", 1, {}, None),
    "no_alert": ("Skipped", 0, {}, "no upstream task failed (trigger any_failed)"),
    "after_skip": ("Skipped", 0, {}, "upstream skipped: no_alert"),
    "blocked": ("TriggerFailed", 0, {}, "upstream did not succeed: slow (TimedOut)"),
    "env": ("Success", 1, {}, None),
    "ctx": ("Success", 3, {"Success": 2}, None),
    "where": ("Success", 1, {}, None),
    "exits": ("Failed", 1, {}, "SystemExit: 3"),
    "survivor": ("Success", 1, {}, None),
}


@dataclass
class Behaviour:
    kind: str
    run: Run
    module: str
    found_on_workers: tuple = ()  # dask-cluster: what importing the task module finds on each worker


@pytest.fixture(scope="module", params=EXECUTORS)
def behaviour(request, tmp_path_factory) -> Behaviour:
    """The flow with every behaviour, run once on each executor."""
    kind = request.param
    folder = tmp_path_factory.mktemp(f"behaviours-{kind}")
    module = write_flow(folder, FLOW, TASKS, executor_yaml(kind, request))
    cluster = request.getfixturevalue("dask_cluster") if kind == "dask" else None
    found = () if cluster is None else tuple(cluster.run_on_workers(importlib.util.find_spec, module).values())
    run = run_flow(folder)
    if cluster is not None:
        found += tuple(cluster.run_on_workers(importlib.util.find_spec, module).values())
    return Behaviour(kind, run, module, found)


def test_every_task_ends_alike_on_every_executor(behaviour):
    run = behaviour.run
    assert run.rc == 1, run.stderr
    report = run.report
    assert (report["flow"], report["state"]) == ("behaviours", "Failed")
    # A Failed run says which tasks did not succeed, as an agent's run does.
    bad = {f"{name} ({shape[0]})" for name, shape in EXPECTED.items()
           if shape[0] in ("Failed", "TimedOut", "TriggerFailed", "Cancelled")}
    head, _, named = report["message"].partition(": ")
    assert (head, set(named.split(", "))) == ("tasks that did not succeed", bad)
    assert {name: shape(task) for name, task in report["tasks"].items()} == EXPECTED, run.stderr


def test_results_keep_their_type_and_format_into_strings(behaviour):
    """`check` asserts the types it receives (a list, a dataclass of the flow's own module, a
    bool, None, a dict holding a tuple) and a string with references formatted into it."""
    assert shape(behaviour.run.task("check")) == ("Success", 1, {}, None), behaviour.run.stderr
    for name in ("zipped_seen", "over_list_seen", "empty_seen", "gather"):
        assert behaviour.run.task(name)["state"] == "Success", (name, behaviour.run.stderr)


def test_retries_count_attempts_and_wait_the_retry_delay(behaviour):
    run = behaviour.run
    assert (run.folder / "flaky.count").read_text() == "3"
    assert (run.folder / "exhausted.count").read_text() == "2"
    assert run.task("flaky")["duration_s"] >= 0.4  # two retry delays of 200 ms
    assert logged(run.stderr, "flaky", r"attempt 1 failed: ConnectionError: call 1; retrying in 0\.2s \(retry 1 of 3\)",
                  "WARNING"), run.stderr
    assert logged(run.stderr, "flaky", r"attempt 2 failed: ConnectionError: call 2; retrying in 0\.2s \(retry 2 of 3\)",
                  "WARNING"), run.stderr
    assert logged(run.stderr, "exhausted", "Failed: ConnectionError: call 2", "ERROR "), run.stderr


def test_timeout_ends_the_attempt_on_time(behaviour):
    """TimedOut at the deadline everywhere; the attempt itself is stopped where it can be (see
    Traits.stray): `probe` waited past the moment `slow` would have written its file."""
    run = behaviour.run
    slow = run.task("slow")
    assert slow["state"] == "TimedOut"
    # On time: well before the 1.5 s the task sleeps (a process pool's duration includes starting
    # its child, the deadline itself does not).
    assert 0.25 <= slow["duration_s"] < 1.4, slow
    assert (run.folder / "slow.done").exists() == TRAITS[behaviour.kind].stray
    assert not (run.folder / "blocked.ran").exists() and (run.folder / "alert.ran").exists()


def test_triggers_skip_and_trigger_fail(behaviour):
    folder = behaviour.run.folder
    ran = sorted(p.name for p in folder.glob("*.ran"))
    assert ran == ["alert.ran", "on_start.ran", "survivor.ran"]


def test_hooks_run_around_a_failed_run(behaviour):
    run = behaviour.run
    assert (run.folder / "on_start.ran").exists()
    summary = json.loads((run.folder / "on_exit.json").read_text())
    assert summary == {"state": "Failed", "tasks": {name: t["state"] for name, t in run.report["tasks"].items()}}


def test_environment_env_reaches_the_tasks(behaviour):
    environ = "hi" if TRAITS[behaviour.kind].worker_env else "<unset>"
    assert logged(behaviour.run.stderr, "env", f"environ={environ} ref=hi fallback=dflt"), behaviour.run.stderr


def test_context_values_and_log_lines_with_the_task_label(behaviour):
    run = behaviour.run
    run_id = run.report["run_id"]
    for index, attempt in ((0, 1), (1, 1), (1, 2)):
        message = f"run={run_id} flow=behaviours task=ctx index={index} attempt={attempt} n=2"
        assert logged(run.stderr, rf"ctx\[{index}\]", message), (message, run.stderr)
    assert logged(run.stderr, r"ctx\[1\]", r"attempt 1 failed: RuntimeError: first attempt of b fails; retrying in 0s "
                                           r"\(retry 1 of 1\)", "WARNING"), run.stderr


def test_sys_exit_fails_only_that_task(behaviour):
    run = behaviour.run
    assert shape(run.task("exits")) == ("Failed", 1, {}, "SystemExit: 3")
    assert (run.folder / "survivor.ran").exists() and run.report["state"] == "Failed"


def test_tasks_run_where_the_executor_puts_them(behaviour, request):
    run = behaviour.run
    found = re.search(r" where \| pid=(\d+) cwd=(.+)$", run.stderr, re.M)
    assert found, run.stderr
    pid, cwd = int(found.group(1)), Path(found.group(2))
    assert (pid == run.pid) == TRAITS[behaviour.kind].in_process
    if behaviour.kind == "dask":
        # On a worker of the shared cluster, whose working directory is an empty folder and whose
        # import path does not have the flow's folder, before the run and after it: the task code
        # could only get there by value.
        cluster = request.getfixturevalue("dask_cluster")
        assert cwd == cluster.worker_dir and list(cwd.iterdir()) == []
        assert pid in cluster.run_on_workers(os.getpid).values()
        assert behaviour.found_on_workers == (None,) * 2 * cluster.nworkers
    else:
        assert cwd == run.folder


# -- Ctrl-C ------------------------------------------------------------------------------------------------
CANCEL_TASKS = '''
import os, time

from flowspec import context


def chatty(lines):
    for i in range(lines):
        context.logger.info("log line %d", i)
        print(f"print line {i}")


def sleeper():
    context.logger.info("going to sleep")
    release = os.path.join(context.params["d"], "release")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not os.path.exists(release):
        time.sleep(0.02)
    open(os.path.join(context.params["d"], context.task_name + ".finished"), "w").close()


def mark(item=None):
    open(os.path.join(context.params["d"], context.task_name + ".ran"), "w").close()


def on_exit(run):
    with open(os.path.join(context.params["d"], "on_exit.txt"), "w") as fh:
        fh.write(run["state"])
'''

CANCEL_FLOW = """\
version: 1
name: interrupted
parameters:
  d: {type: string}
tasks:
  first: {run: "MOD:chatty", with: {lines: 100}}
  sleeper: {run: "MOD:sleeper", after: [first]}
  sibling: {run: "MOD:sleeper", after: [first]}
  later: {run: "MOD:mark", after: [sleeper]}
  later_mapped: {run: "MOD:mark", map: {item: [1, 2]}, after: [sleeper]}
environment:
  on_exit: "MOD:on_exit"
"""
CANCELLED = ("Cancelled", 0, {}, "the flow run was cancelled")


@dataclass
class Cancelled:
    kind: str
    run: Run
    seconds: float  # from SIGINT to the end of `flowspec run`
    finished_after_release: list


@pytest.fixture(scope="module", params=EXECUTORS)
def cancelled(request, tmp_path_factory) -> Cancelled:
    """The flow interrupted with SIGINT (what Ctrl-C sends) while `sleeper` and `sibling` run."""
    kind = request.param
    folder = tmp_path_factory.mktemp(f"cancel-{kind}")
    write_flow(folder, CANCEL_FLOW, CANCEL_TASKS, executor_yaml(kind, request))
    proc = start_run(folder)
    try:
        # both sleepers run at once, except on `local`, which runs one task at a time
        needles = ["sleeper | going to sleep"] + ([] if kind == "local" else ["sibling | going to sleep"])
        seen = read_until(proc, needles, timeout=60)
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        run = finish_run(proc, folder, timeout=60, seen=seen)
        seconds = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        (folder / "release").touch()  # a sleeper that still runs somewhere ends now
    deadline = time.monotonic() + (10 if kind == "dask" else 0.3)
    while time.monotonic() < deadline and not list(folder.glob("*.finished")):
        time.sleep(0.02)
    return Cancelled(kind, run, seconds, sorted(p.name for p in folder.glob("*.finished")))


def test_ctrl_c_cancels_what_has_not_finished_and_exits_130(cancelled):
    run = cancelled.run
    assert run.rc == 130, run.stderr
    report = run.report  # the summary is still printed
    assert (report["state"], report["message"]) == ("Cancelled", "interrupted by the user")
    # A task stopped in its attempt counts that attempt (it ran); one that never started, none.
    ran = ("Cancelled", 1, {}, "the flow run was cancelled")
    assert {name: shape(task) for name, task in report["tasks"].items()} == {
        "first": ("Success", 1, {}, None), "sleeper": ran, "sibling": CANCELLED if cancelled.kind == "local" else ran,
        "later": CANCELLED, "later_mapped": CANCELLED}
    assert (run.folder / "on_exit.txt").read_text() == "Cancelled"
    assert not list(run.folder.glob("*.ran"))
    assert cancelled.seconds < 15
    # Nothing reads as a failure: the attempts that were stopped were cancelled, not failed.
    assert not [line for line in run.stderr.splitlines() if " ERROR " in line or "Traceback" in line], run.stderr


def test_ctrl_c_stops_the_running_attempt_except_on_a_shared_cluster(cancelled):
    """`local` interrupts the main thread, a process pool kills its children, a pool of threads
    dies with the process, a temporary cluster is closed with the run. A Dask worker of a shared
    cluster cannot stop the thread running a cancelled task: it runs to its end (here, until the
    test releases it)."""
    expected = ["sibling.finished", "sleeper.finished"] if cancelled.kind == "dask" else []
    assert cancelled.finished_after_release == expected


def test_print_and_log_lines_stay_whole_lines(cancelled):
    """`first` runs alone (every other task waits for it), so nothing else writes meanwhile but the
    task's own process and, for log lines it sends from another process, `flowspec run`."""
    run = cancelled.run
    for i in range(100):
        assert logged(run.stderr, "first", f"log line {i}"), run.stderr
        assert logged(run.stderr, "first", f"print line {i}"), run.stderr
    assert "print line" not in run.stdout


# -- a process that dies under its task --------------------------------------------------------------------
DEATH_TASKS = '''
import os

from flowspec import context


def _log_call():
    with open(os.path.join(context.params["d"], context.task_name + ".calls"), "a") as fh:
        fh.write(f"{context.attempt} {os.getpid()}\\n")


def always_dies():
    _log_call()
    os._exit(1)


def dies_on_first_attempt():
    _log_call()
    if context.attempt == 1:
        os._exit(1)
    return "survived"


def expect(got, want):
    assert got == want, f"{got!r} != {want!r}"
'''

DEATH_FLOW = """\
version: 1
name: deaths
parameters:
  d: {type: string}
tasks:
  always_dies: {run: "MOD:always_dies"}
  dies_once:
    run: "MOD:dies_on_first_attempt"
    retries: 1
    retry_delay: 100ms
    after: [always_dies]
    trigger: all_finished
  downstream: {run: "MOD:expect", with: {got: "${{ tasks.dies_once }}", want: survived}}
"""


def _calls(folder: Path, task: str) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split())) for line in (folder / f"{task}.calls").read_text().splitlines()]


@pytest.mark.parametrize("kind", OUT_OF_PROCESS)
def test_a_dead_worker_fails_the_attempt_and_retries_apply(kind, request, tmp_path):
    """The process running a task dies under it (os._exit): a child of the process pool, or a Dask
    worker (its nanny starts a new one). The attempt fails with a message that says so, `retries`
    apply, and the next attempt runs in a new process."""
    folder = tmp_path / "flow"
    write_flow(folder, DEATH_FLOW, DEATH_TASKS, executor_yaml(kind, request))
    reruns = 0  # the times Dask itself runs a task again on another worker when the one running it died
    if kind == "dask":
        cluster = request.getfixturevalue("dask_cluster")
        with cluster.client() as client:
            # the scheduler's own setting (distributed.scheduler.allowed-failures, 3 by default);
            # a temporary cluster is started with 0, so that only flowspec's `retries` apply
            reruns = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    try:
        run = run_flow(folder)
    finally:
        if kind == "dask":
            cluster.wait_for_workers()  # the nannies start new workers: leave the cluster whole
    assert run.rc == 1, run.stderr
    tasks = run.report["tasks"]
    died = tasks["always_dies"]
    assert (died["state"], died["attempts"]) == ("Failed", 1), run.stderr
    if kind == "processes":
        assert died["message"] == "WorkerDied: the pool process running the task died (exit code 1)"
    else:
        assert died["message"].startswith("the Dask worker running it died (Attempted to run task "), died
        assert f"on {reruns + 1} different workers" in died["message"], died
    assert logged(run.stderr, "always_dies", "Failed: " + re.escape(died["message"]), "ERROR "), run.stderr
    assert shape(tasks["dies_once"]) == ("Success", 2, {}, None), run.stderr
    assert shape(tasks["downstream"]) == ("Success", 1, {}, None), run.stderr
    assert [attempt for attempt, _ in _calls(folder, "always_dies")] == [1] * (reruns + 1)
    calls = _calls(folder, "dies_once")
    assert [attempt for attempt, _ in calls] == [1] * (reruns + 1) + [2]
    assert len({pid for _, pid in calls}) == len(calls)  # each call in a new process: the old one died
    assert logged(run.stderr, "dies_once", "attempt 1 failed: .*; retrying in 0.1s \\(retry 1 of 1\\)", "WARNING")


# -- FlowRunner in this process: result objects and state notifications ------------------------------------
OBSERVED_FLOW = """\
version: 1
name: observed
parameters:
  d: {type: string}
  n: {type: integer, default: 2}
tasks:
  point: {run: "steps.py:point"}
  values: {run: "steps.py:values"}
  zipped: {run: "steps.py:add", map: {a: [1, 2, 3], b: [10, 20, 30]}}
  one_bad: {run: "steps.py:fail_on", map: {x: [1, 2, 3]}, with: {bad: 2}}
  child_to_child: {run: "steps.py:add", map: {a: "${{ tasks.one_bad }}"}, with: {b: 100}}
  flaky: {run: "steps.py:flaky", retries: 3, retry_delay: 50ms}
"""


class Recorder:
    """An observer that keeps every notification."""

    def __init__(self) -> None:
        self.tasks: list[tuple] = []
        self.flows: list[str] = []

    def task_state(self, task, index, state, attempt, message) -> None:
        self.tasks.append((task, index, state, attempt))

    def flow_state(self, result) -> None:
        self.flows.append(result.state)

    def of(self, task: str, index=None) -> list[tuple]:
        return [(s, a) for t, i, s, a in self.tasks if t == task and i == index]


@pytest.mark.parametrize("kind", EXECUTORS)
def test_flowrunner_gets_result_objects_and_every_state_change(kind, request, tmp_path, monkeypatch):
    from flowspec.callables import load_callable
    from flowspec.compile import compile_file
    from flowspec.environments.base import run_in_process

    monkeypatch.setattr(sys, "path", list(sys.path))  # the spec puts its folder first on the import path
    (tmp_path / "steps.py").write_text(TASKS, encoding="utf-8")
    (tmp_path / "flow.yaml").write_text(OBSERVED_FLOW + f"executor: {executor_yaml(kind, request)}\n", encoding="utf-8")
    spec, diags = compile_file(str(tmp_path / "flow.yaml"))
    assert not diags, [d.text() for d in diags]
    recorder = Recorder()
    result = run_in_process(spec, {"d": str(tmp_path), "n": 2}, observers=[recorder])

    point_class = load_callable("steps.py:point", str(tmp_path)).__globals__["Point"]
    assert type(result.tasks["point"].result) is point_class and result.tasks["point"].result == point_class(3, 4)
    values = result.tasks["values"].result
    assert values == {"tup": (1, "a"), "half": 0.5, "nested": {"k": [1, {"z": None}]}}
    assert type(values["tup"]) is tuple
    assert (result.tasks["zipped"].result, result.tasks["zipped"].children) == ([11, 22, 33], ["Success"] * 3)
    assert result.tasks["one_bad"].result == [1, None, 3]
    assert result.tasks["child_to_child"].result == [101, None, 103]
    assert result.tasks["child_to_child"].children == ["Success", "TriggerFailed", "Success"]
    assert (result.tasks["flaky"].state, result.tasks["flaky"].result) == ("Success", 3)

    assert recorder.of("flaky") == [("Running", 1), ("Retrying", 1), ("Running", 2), ("Retrying", 2),
                                    ("Running", 3), ("Success", 3)]
    assert recorder.of("one_bad", 1) == [("Running", 1), ("Failed", 1)]
    assert recorder.of("child_to_child", 0) == [("Running", 1), ("Success", 1)]
    assert recorder.of("child_to_child", 1) == [("TriggerFailed", 0)]
    assert recorder.flows == ["Running", "Failed"]


@pytest.mark.parametrize("kind", EXECUTORS)
def test_only_the_results_asked_for_are_kept(kind, request, tmp_path, monkeypatch):
    from flowspec.compile import compile_file
    from flowspec.environments.base import run_in_process

    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "steps.py").write_text(TASKS, encoding="utf-8")
    (tmp_path / "flow.yaml").write_text(OBSERVED_FLOW + f"executor: {executor_yaml(kind, request)}\n", encoding="utf-8")
    spec, diags = compile_file(str(tmp_path / "flow.yaml"))
    assert not diags, [d.text() for d in diags]
    some = run_in_process(spec, {"d": str(tmp_path)}, keep_results=("zipped", "child_to_child"))
    kept = {name: rec.result for name, rec in some.tasks.items() if rec.result is not None}
    assert kept == {"zipped": [11, 22, 33], "child_to_child": [101, None, 103]}
    assert some.tasks["one_bad"].children == ["Success", "Failed", "Success"]  # states are all there
    none = run_in_process(spec, {"d": str(tmp_path)}, keep_results=False)
    assert [rec.result for rec in none.tasks.values()] == [None] * len(none.tasks)
    assert none.tasks["child_to_child"].children == ["Success", "TriggerFailed", "Success"]
