"""The backend commands as a user runs them: register, flows, run --name, runs, concurrency-limit,
agents, and local runs recorded; each against a SQLite backend in a private flowspec home."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

SPEC = """\
version: 1
name: greet
project: {project}
description: {description}
parameters:
  who: {{type: string, default: World}}
  times: {{type: integer, default: 1}}
tasks:
  hello:
    run: steps:hello
    with: {{who: "${{{{ params.who }}}}", times: "${{{{ params.times }}}}"}}
environment:
  labels: [{labels}]
"""
STEPS = """\
from flowspec import context

def hello(who: str, times: int = 1) -> str:
    context.logger.info("hello %s x%d", who, times)
    return who
"""
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class Home:
    """A flowspec home with one flow folder; `cli(...)` runs the command against it."""

    def __init__(self, cli, root: Path) -> None:
        self._cli, self.root = cli, root
        self.env = {"FLOWSPEC_HOME": str(root / "home"), "FLOWSPEC_BACKEND": ""}
        self.spec = root / "greet" / "flow.yaml"
        self.spec.parent.mkdir()
        self.write()
        (self.spec.parent / "steps.py").write_text(STEPS)

    def write(self, project: str = "demo", description: str = "one", labels: str = "") -> None:
        self.spec.write_text(SPEC.format(project=project, description=description, labels=labels))

    def cli(self, *args, env: dict | None = None):
        return self._cli(*args, env={**self.env, **(env or {})})

    def json(self, *args):
        done = self.cli(*args, "--format", "json")
        assert done.rc == 0, done.output
        return json.loads(done.stdout)


@pytest.fixture
def home(cli, tmp_path: Path) -> Home:
    return Home(cli, tmp_path)


def test_register_keeps_an_unchanged_version_and_bumps_a_changed_spec_or_code(home: Home) -> None:
    first = home.cli("register", home.spec)
    assert first.rc == 0, first.output
    assert first.stdout.startswith("Registered flow 'greet' in project 'demo' as version 1 (labels: -; storage: local ")
    again = home.cli("register", home.spec)
    assert again.stdout.strip() == "Flow 'greet' in project 'demo' is unchanged: keeping version 1"
    (home.spec.parent / "steps.py").write_text(STEPS.replace("hello %s", "hi %s"))
    assert home.json("register", home.spec)["version"] == 2  # code beside the spec counts
    home.write(description="two")
    third = home.json("register", home.spec, "--label", "extra")
    assert (third["version"], third["created"], third["labels"]) == (3, True, ["extra"])
    stored = Path(third["storage"]["path"])
    assert stored.parent == home.root / "home" / "flows" and stored.name == third["storage"]["sha256"] + ".flow"
    assert home.json("register", home.spec, "--label", "extra")["created"] is False
    assert home.json("register", home.spec, "--project", "other")["version"] == 1
    listed = home.json("flows", "list")
    assert [(f["project"], f["name"], f["version"]) for f in listed] == [("demo", "greet", 3), ("other", "greet", 1)]
    text = home.cli("flows", "list", "--project", "demo").stdout.splitlines()
    assert text[0].split() == ["PROJECT", "NAME", "VERSION", "LABELS", "STORAGE", "REGISTERED", "NEXT", "RUN"]
    assert text[1].split()[:5] == ["demo", "greet", "3", "extra", "local"]
    assert home.cli("flows", "list", "--project", "none").stdout.strip() == "no flows registered in project 'none'"


def test_register_reports_an_invalid_spec_at_its_position_and_records_nothing(home: Home) -> None:
    home.spec.write_text(home.spec.read_text().replace("run: steps:hello", "run: steps:hello\n    retries: many"))
    done = home.cli("register", home.spec)
    assert done.rc == 1
    assert re.search(r"flow\.yaml:\d+:\d+: error: tasks\.hello\.retries: ", done.stderr)
    assert "nothing was registered" in done.stderr
    assert home.json("flows", "list") == []


def test_register_no_build_needs_an_earlier_build_of_the_same_code(home: Home) -> None:
    early = home.cli("register", home.spec, "--no-build")
    assert early.rc == 1 and "no intact build of this flow" in early.stderr
    assert "hint: register without --no-build to build it" in early.stderr
    built = home.json("register", home.spec)
    assert home.json("register", home.spec, "--no-build")["storage"] == built["storage"]


def test_build_builds_storage_that_register_no_build_then_uses_and_records_nothing(home: Home) -> None:
    built = home.json("build", home.spec)
    stored = Path(built["path"])
    assert stored.is_file() and stored.name == built["sha256"] + ".flow"
    assert home.json("flows", "list") == []  # a build is not a registration
    assert home.json("register", home.spec, "--no-build")["storage"] == built
    (home.spec.parent / "steps.py").write_text("def hello(:\n")
    broken = home.cli("build", home.spec)
    assert broken.rc == 1 and "nothing was built" in broken.stderr
    assert f"{home.spec}:10:10: error: tasks.hello.run: importing 'steps' failed: invalid syntax" in broken.stderr


def test_run_name_creates_a_scheduled_run_and_warns_when_no_agent_could_take_it(home: Home) -> None:
    home.write(labels="dev")
    home.cli("register", home.spec)
    done = home.cli("run", "--name", "greet", "--param", "times=3", "--label", "gpu")
    assert done.rc == 0, done.output
    run_id = done.stdout.strip()
    assert RUN_ID.match(run_id)
    assert done.stderr.strip() == (
        f"flowspec: warning: run {run_id} may wait forever: no agent seen in the last 60 s has labels"
        " covering [dev, gpu]; agents: none")
    shown = home.json("runs", "show", run_id[:6])
    assert (shown["state"], shown["labels"], shown["parameters"]) == ("Scheduled", ["dev", "gpu"],
                                                                      {"who": "World", "times": 3})
    assert shown["history"][0]["state"] == "Scheduled" and "covering [dev, gpu]" in shown["waiting_reason"]


@pytest.mark.parametrize("args, message", [
    (("--name", "nope"), "flowspec: error: no flow named 'nope' is registered"),
    (("--name", "greet", "--param", "times=many"), "--param times: expected integer, got string \"many\""),
    (("--name", "greet", "--param", "whom=x"), "--param whom: unknown parameter 'whom'"),
])
def test_run_name_refuses_unknown_flows_and_bad_parameters(home: Home, args, message) -> None:
    home.cli("register", home.spec)
    done = home.cli("run", *args)
    assert done.rc in (1, 2) and message in done.stderr, done.output
    assert home.json("runs", "list") == []


def test_run_takes_a_file_or_a_name(home: Home) -> None:
    both = home.cli("run", home.spec, "--name", "greet")
    assert both.rc == 2 and "not both" in both.stderr
    neither = home.cli("run", "--watch")
    assert neither.rc == 2 and "give FILE to run a spec here, or --name NAME" in neither.stderr


def test_runs_show_names_the_full_limit_and_cancel_ends_a_waiting_run(home: Home) -> None:
    home.write(labels="dev")
    home.cli("register", home.spec)
    assert home.cli("concurrency-limit", "set", "dev", "0").rc == 0
    run_id = home.cli("run", "--name", "greet").stdout.strip()
    shown = home.cli("runs", "show", run_id).stdout
    assert re.search(r"^waiting: +.*label 'dev' is at its limit of 0$", shown, re.M), shown
    assert home.cli("runs", "list").stdout.splitlines()[1].split()[:5] == [run_id, "greet", "Scheduled", "dev", "-"]
    assert home.json("runs", "list", "--state", "Running") == []
    cancelled = home.cli("runs", "cancel", run_id)
    assert cancelled.rc == 0 and cancelled.stdout.strip() == f"run {run_id}: Cancelled"
    assert home.json("runs", "cancel", run_id) == {"id": run_id, "state": "Cancelled"}
    assert [e["state"] for e in home.json("runs", "show", run_id)["history"]] == ["Scheduled", "Cancelled"]
    assert [r["id"] for r in home.json("runs", "list", "--state", "Cancelled", "--flow", "greet")] == [run_id]


def test_runs_commands_name_what_is_wrong(home: Home) -> None:
    unknown = home.cli("runs", "show", "0123abcd")
    assert unknown.rc == 1 and "no flow run has id '0123abcd'" in unknown.stderr
    assert "hint: list runs with: flowspec runs list" in unknown.stderr
    bad_state = home.cli("runs", "list", "--state", "Done")
    assert bad_state.rc == 2 and "--state Done: not a flow run state" in bad_state.stderr


def test_concurrency_limits_set_list_delete(home: Home) -> None:
    assert home.cli("concurrency-limit", "set", "dev", "2").stdout.strip() == "label 'dev': at most 2 active flow runs"
    home.cli("concurrency-limit", "set", "prod", "5")
    assert home.json("concurrency-limit", "list") == [
        {"label": "dev", "limit": 2, "in_use": 0, "holders": []},
        {"label": "prod", "limit": 5, "in_use": 0, "holders": []}]
    assert home.cli("concurrency-limit", "list").stdout.splitlines()[1].split() == ["dev", "2", "0/2", "-"]
    assert home.json("concurrency-limit", "delete", "dev") == {"label": "dev", "deleted": True}
    missing = home.cli("concurrency-limit", "delete", "dev")
    assert missing.rc == 1 and "label 'dev' has no concurrency limit" in missing.stderr
    negative = home.cli("concurrency-limit", "set", "dev", "-1")
    assert negative.rc == 2 and "expected a whole number >= 0" in negative.stderr


def test_a_local_run_is_recorded_with_its_task_states_and_logs(home: Home) -> None:
    done = home.cli("run", home.spec, "--param", "who=Ford", "--format", "json")
    assert done.rc == 0, done.output
    result = json.loads(done.stdout)
    assert sorted(result) == ["duration_s", "flow", "message", "run_id", "state", "tasks"]
    [run] = home.json("runs", "list")
    assert (run["id"], run["flow"], run["state"], run["exit_code"], run["flow_id"]) == (
        result["run_id"], "greet", "Success", 0, None)
    shown = home.json("runs", "show", run["id"])
    assert [e["state"] for e in shown["history"]] == ["Running", "Success"]
    assert [(t["task"], t["state"]) for t in shown["tasks"]] == [("hello", "Success")]
    logs = home.cli("runs", "logs", run["id"]).stdout
    assert re.search(r"^\d\d:\d\d:\d\d\.\d{3} INFO    hello \| hello Ford x1$", logs, re.M), logs
    assert home.cli("runs", "logs", run["id"], "--follow").stdout == logs  # a finished run: all, then stop


def test_a_local_run_goes_on_unrecorded_when_the_backend_is_unreachable(home: Home) -> None:
    down = {"FLOWSPEC_BACKEND": "postgresql://flowspec@127.0.0.1:1/none"}
    done = home.cli("run", home.spec, env=down)
    assert done.rc == 0, done.output
    warnings = [ln for ln in done.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("flowspec: warning: this run is not recorded in the backend")


def test_backend_flag_and_empty_listings(home: Home) -> None:
    home.cli("register", home.spec)
    other = f"sqlite://{home.root / 'other.db'}"
    assert home.cli("flows", "list", "--backend", other).stdout.strip() == "no flows registered"
    assert home.cli("agents", "list").stdout.strip() == "no agent has been seen; start one with: flowspec agent start"
    assert home.json("agents", "list", "--backend", other) == []
    assert home.cli("runs", "list").stdout.strip() == "no flow runs match"


# -- a local run: what is recorded, and where ----------------------------------------------------
def test_run_file_with_backend_records_the_run_there(home: Home) -> None:
    other = home.root / "other.db"
    done = home.cli("run", home.spec, "--backend", f"sqlite://{other}", "--format", "json")
    assert done.rc == 0, done.output
    run_id = json.loads(done.stdout)["run_id"]
    assert [r["id"] for r in home.json("runs", "list", "--backend", str(other))] == [run_id]
    assert home.json("runs", "list") == []  # not in the default backend


@pytest.mark.parametrize("flag", [("--label", "dev"), ("--project", "demo"), ("--watch",)])
def test_run_file_names_the_flag_that_needs_name(home: Home, flag) -> None:
    done = home.cli("run", home.spec, *flag)
    assert done.rc == 2 and f"{flag[0]} needs --name" in done.stderr, done.output
    assert "FILE was not given" not in done.stderr and "give FILE" not in done.stderr


@pytest.mark.parametrize("args", [("runs", "list"), ("agents", "list"), ("register", "SPEC"), ("run", "SPEC")])
def test_a_flowspec_home_that_is_a_file_is_a_clear_error(home: Home, args) -> None:
    a_file = home.root / "not-a-dir"
    a_file.write_text("")
    done = home.cli(*(str(home.spec) if a == "SPEC" else a for a in args), env={"FLOWSPEC_HOME": str(a_file)})
    assert done.rc == 2, done.output
    assert f"FLOWSPEC_HOME={a_file}: is a file, not a directory" in done.stderr, done.output
    assert "internal error" not in done.stderr


def test_a_failed_local_run_says_which_tasks_failed_as_an_agent_run_does(home: Home) -> None:
    (home.spec.parent / "steps.py").write_text(STEPS + "\ndef boom():\n    raise ValueError('no')\n")
    home.spec.write_text(home.spec.read_text().replace("environment:", "  after_it:\n    run: steps:boom\n"
                                                       "    after: [hello]\nenvironment:"))
    done = home.cli("run", home.spec, "--format", "json")
    assert done.rc == 1, done.output
    message = "tasks that did not succeed: after_it (Failed)"
    assert json.loads(done.stdout)["message"] == message
    [run] = home.json("runs", "list")
    assert (run["state"], run["message"]) == ("Failed", message)


@pytest.mark.parametrize("problem", ["import", "param"])
def test_a_run_where_nothing_ran_is_not_recorded(home: Home, problem) -> None:
    """One rule for every run stopped before it started: a task module that does not import,
    like a bad parameter, is reported (exit 2) and leaves no run behind."""
    if problem == "import":
        (home.spec.parent / "steps.py").write_text("raise ImportError('broken on purpose')\n")
        done = home.cli("run", home.spec, "--format", "json")
    else:
        done = home.cli("run", home.spec, "--param", "times=many", "--format", "json")
    assert done.rc == 2, done.output
    assert home.json("runs", "list") == []


# -- lost runs are seen by whoever looks ------------------------------------------------------------
SLEEPY = "import time\n\ndef sleep(seconds: float) -> None:\n    time.sleep(seconds)\n"


def _lost_local_runs(home: Home, cli_start, n: int) -> tuple[list[str], set[int]]:
    """`n` runs of `flowspec run FILE` killed with SIGKILL while their task runs: nothing said
    they ended. Returns their ids and the pids of their processes, as soon as they are killed."""
    import signal
    import time

    (home.spec.parent / "sleepy.py").write_text(SLEEPY)
    spec = home.root / "greet" / "sleepy.yaml"
    spec.write_text("version: 1\nname: sleepy\ntasks:\n  nap: {run: 'sleepy:sleep', with: {seconds: 60}}\n")
    procs = [cli_start("run", spec, "--heartbeat-timeout", "1", "--format", "json", env=home.env) for _ in range(n)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        runs = home.json("runs", "list")
        if len(runs) == n and {r["state"] for r in runs} == {"Running"}:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the runs were not recorded Running: {runs}")
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    return [run["id"] for run in runs], {proc.pid for proc in procs}


def test_killed_local_runs_are_marked_failed_by_whoever_reads_them(home: Home, cli_start) -> None:
    """`runs logs --follow`, started before the run is lost, ends when it is (exit 1); `runs show`
    and `runs list`, run after the timeout, mark what they read."""
    import time

    (followed, shown, listed), pids = _lost_local_runs(home, cli_start, 3)
    done = home.cli("runs", "logs", followed, "--follow")
    assert done.rc == 1, done.output
    time.sleep(1.2)
    assert home.cli("runs", "show", shown).rc == 0
    assert [r["state"] for r in home.json("runs", "list", "--state", "Running")] == []
    readers = {followed: "runs logs --follow", shown: "runs show", listed: "runs list"}
    for run_id, reader in readers.items():
        got = home.json("runs", "show", run_id)
        assert got["state"] == "Failed"
        said = re.fullmatch(r"no heartbeat for 1s: the process running it \(a local `flowspec run`, pid (\d+) on \S+\)"
                            rf" is gone; marked Failed by `flowspec {reader}` \(pid \d+ on \S+\)", got["message"])
        assert said and int(said.group(1)) in pids, got["message"]
        assert [e["state"] for e in got["history"]] == ["Running", "Failed"]


def test_a_live_local_run_heartbeats_and_is_never_marked_lost(home: Home, cli_start) -> None:
    import time

    (home.spec.parent / "sleepy.py").write_text(SLEEPY)
    spec = home.root / "greet" / "sleepy.yaml"
    spec.write_text("version: 1\nname: sleepy\ntasks:\n  nap: {run: 'sleepy:sleep', with: {seconds: 2.5}}\n")
    proc = cli_start("run", spec, "--heartbeat-timeout", "0.5", "--format", "json", env=home.env)
    seen = set()
    while proc.poll() is None:  # readers look all along; the run beats several times per timeout
        seen.update(r["state"] for r in home.json("runs", "list"))
        time.sleep(0.1)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert seen <= {"Running", "Success"} and "Running" in seen, seen
    [run] = home.json("runs", "list")
    assert (run["id"], run["state"]) == (json.loads(out)["run_id"], "Success")
