"""The `local-dask` executor: a pool of threads or processes on this machine.

It needs no extra package: the pool is flowspec's own (the name is Prefect's), built to add as
little as possible per task run. With `scheduler: threads` the runner's units run on `workers`
threads of this process. With `scheduler: processes` each of those threads drives one child
process (started when first needed, with `spawn`); the task's function and arguments go to it
cloudpickled, by value for the spec's own modules, and its log lines come back through the pipe.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Set as AbstractSet
from types import MappingProxyType

from flowspec import logs, serialize
from flowspec.executors.base import Executor


def default_workers() -> int:
    """Enough threads for I/O-bound tasks (those that wait: sleep, network, disk) on small
    machines too: as concurrent.futures.ThreadPoolExecutor, min(32, cores + 4)."""
    return min(32, (os.cpu_count() or 1) + 4)


class Job:
    """A submitted call and, once a pool thread has run it, its value or exception."""

    __slots__ = ("fn", "args", "value", "error", "finished")

    def __init__(self, fn, args) -> None:
        self.fn, self.args = fn, args
        self.value = self.error = None
        self.finished = False

    def run(self) -> None:
        try:
            self.value = self.fn(*self.args)
        except BaseException as exc:  # handed to whoever asks for the result (a Ctrl-C included)
            self.error = exc
        self.finished = True

    def done(self) -> bool:
        return self.finished

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


class ThreadPool:
    """`size` threads taking jobs from one queue. Cheap per job: deque operations, and the
    waiting thread is woken only when it is actually waiting."""

    def __init__(self, size: int, name: str = "flowspec-pool") -> None:
        self.todo: deque = deque()
        self.finished: deque = deque()
        self.held: list = []  # done, but not among the futures of the last wait()
        self.work = threading.Condition(threading.Lock())
        self.done = threading.Condition(threading.Lock())
        self.waiting = self.closed = False
        self.threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(size)]
        for thread in self.threads:
            thread.start()

    def put(self, jobs: list) -> None:
        self.todo.extend(jobs)
        with self.work:
            self.work.notify(len(jobs))

    def _work(self) -> None:
        todo, finished = self.todo, self.finished
        while True:
            try:
                job = todo.popleft()
            except IndexError:
                with self.work:
                    while not todo and not self.closed:
                        self.work.wait()
                    if self.closed:
                        return
                continue
            job.run()
            finished.append(job)
            if self.waiting:
                with self.done:
                    self.done.notify()

    def wait(self, futures) -> list:
        """Block until one of `futures` is done; return all of them that are."""
        wanted = futures if isinstance(futures, (AbstractSet, dict)) else set(futures)
        while True:
            ready, self.held = self.held, []
            finished = self.finished
            while finished:
                ready.append(finished.popleft())
            out = [job for job in ready if job in wanted]
            if len(out) < len(ready):
                self.held = [job for job in ready if job not in wanted]
            if out:
                return out
            with self.done:
                self.waiting = True
                if not finished:
                    self.done.wait(1.0)
                self.waiting = False

    def close(self, cancel: bool = False) -> None:
        """Stop the threads once the queue is empty; with cancel, empty it first. A running
        thread cannot be stopped: it finishes its job in the background (daemon threads)."""
        if cancel:
            self.todo.clear()
        with self.work:
            self.closed = True
            self.work.notify_all()
        if not cancel:
            for thread in self.threads:
                thread.join()


class LocalDaskExecutor(Executor):
    """A pool on this machine. YAML keys: `scheduler` (`threads`, the default, or
    `processes`), `workers` (pool size; default min(32, cores + 4), which suits tasks that
    wait on I/O; for CPU-bound Python code use `processes` and about one worker per core).

    Timeouts: with threads, an attempt past its timeout is marked TimedOut on time but its
    thread cannot be stopped and finishes in the background; with processes, the child
    process running it is killed at the deadline and replaced."""

    def __init__(self, scheduler: str = "threads", workers: int | None = None, **options) -> None:
        super().__init__(scheduler=scheduler, workers=workers, **options)
        self.scheduler = scheduler
        self.workers = workers or default_workers()
        self.ships_code = scheduler == "processes"  # run_in_process registers the spec's modules by value
        self.pool: ThreadPool | None = None
        self.children = None

    def start(self) -> None:
        if self.ships_code:
            self.children = Children()
        self.pool = ThreadPool(self.workers, f"flowspec-{self.scheduler}")

    def submit(self, fn, *args) -> Job:
        return self.submit_many(fn, (args,))[0]

    def submit_many(self, fn, arg_tuples) -> list:
        if self.children is None:
            jobs = [Job(fn, args) for args in arg_tuples]
        else:
            jobs = [Job(*self.children.adapt(fn, args)) for args in arg_tuples]
        self.pool.put(jobs)
        return jobs

    def wait(self, futures) -> list:
        return self.pool.wait(futures)

    def shutdown(self, cancel: bool = False) -> None:
        if self.children is not None:
            self.children.close(cancel)
        if self.pool is not None:
            self.pool.close(cancel)


# -- processes: a child process for each pool thread that is running a task ---------------------
STARTUP_S = 60.0  # a child that is not up by then is taken as dead
class WorkerDied(Exception):
    """The process running a task died (killed, crashed, or os._exit) before it answered."""


class PoolClosed(BaseException):
    """The executor was shut down (Ctrl-C) while a task was waiting for its child process."""


class Children:
    """The child processes of a `processes` pool, started when first needed. A pool thread
    takes an idle child for each call and gives it back after, so a task that follows others
    finds a warm one: at most one child per pool thread, and no interpreter start it can avoid."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.alive: set = set()
        self.idle: list = []
        self.calls: dict = {}  # id(fn) -> ChildCall, so a function is pickled once per run
        self.closed = False

    def adapt(self, fn, args: tuple) -> tuple:
        """(fn, args) to run on a pool thread: a unit's task function is swapped for a proxy
        that runs it in a child process; any other call runs in a child process as a whole."""
        from flowspec.keeping import Kept
        from flowspec.runner import run_unit

        if fn is run_unit:
            task_fn = args[0]
            if type(task_fn) is Kept:  # the store is used here; the call alone goes to the child
                return fn, (Kept(self.proxy(task_fn.fn), task_fn.plan),) + args[1:]
            return fn, (self.proxy(task_fn),) + args[1:]
        return self.proxy(fn), args

    def proxy(self, fn) -> "ChildCall":
        call = self.calls.get(id(fn))
        if call is None or call.fn is not fn:
            serialize.ship(fn)
            call = self.calls[id(fn)] = ChildCall(self, fn)
        return call

    def acquire(self) -> "Child":
        """An idle child that is still alive, or a new one."""
        with self.lock:
            while self.idle:
                child = self.idle.pop()
                if not child.gone and child.proc.poll() is None:
                    return child
                self.alive.discard(child)
        child = Child()
        with self.lock:
            if not self.closed:
                self.alive.add(child)
                return child
        child.kill()
        raise PoolClosed()

    def release(self, child: "Child") -> None:
        """Take a child back after a call; one whose state is unknown (timed out, died,
        interrupted mid-call) is killed instead."""
        with self.lock:
            if child.ready and not child.gone and not self.closed:
                self.idle.append(child)
                return
            self.alive.discard(child)
        child.kill()

    def close(self, cancel: bool) -> None:
        """Stop every child: at once when cancelling (running tasks stop), else when idle.
        All are told to stop before any is waited for: they exit side by side."""
        with self.lock:
            self.closed = True
            children, self.alive, self.idle = list(self.alive), set(), []
        if cancel:
            for child in children:
                child.kill()
            return
        for child in children:
            child.conn.close()  # the child sees end-of-file and exits
        for child in children:
            child.stop()


class ChildCall:
    """Calls `fn` in the calling pool thread's child process, with the current task context.
    The runner uses `call_with_timeout` instead of its own timer: at the deadline the child
    is killed (the attempt really stops) and replaced on the next call."""

    __slots__ = ("children", "fn", "blob")

    def __init__(self, children: Children, fn) -> None:
        self.children, self.fn = children, fn
        self.blob = serialize.dumps(fn)

    def __call__(self, *args, **kwargs):
        return self.call_with_timeout(kwargs, None, args)

    def call_with_timeout(self, kwargs: dict, timeout: float | None, args: tuple = ()):
        from flowspec import context

        children = self.children
        if children.closed:
            raise PoolClosed()
        child = children.acquire()
        ctx = context.current()
        fields = (ctx.run_id, ctx.flow_name, ctx.task_name, ctx.map_index, ctx.attempt, ctx.run_name)
        try:
            return child.call(id(self.fn), self.blob, ctx, (args, kwargs, fields), timeout)
        except BaseException:
            if children.closed:  # Ctrl-C: close() killed the child; the attempt was cancelled, it did not fail
                raise PoolClosed() from None
            raise
        finally:
            children.release(child)


class Child:
    """One child process and the parent's end of its socket. A fresh interpreter (not a fork
    of this process, which has threads; not multiprocessing's spawn, which re-imports the
    caller's main script) that imports only what the tasks need."""

    def __init__(self) -> None:
        import socket
        import subprocess
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        stdout_is_stderr = logs.fileno(sys.stdout) == 2  # `run --format json` sends print() to stderr
        level = logging.getLogger("flowspec.task").getEffectiveLevel()
        # `python -c` puts the current folder first on the import path: a `logging.py` there (the
        # spec's folder, often) would stand in for the standard module. It goes last instead.
        code = (f"import sys; sys.path[0] == '' and sys.path.append(sys.path.pop(0)); "
                f"from {__name__} import child_main; child_main({theirs.fileno()}, {level}, {stdout_is_stderr})")
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()],
                                     stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.known: set = set()  # functions, and the runs whose parameters, this child has been sent
        self.ready = True
        self.gone = False
        if not self.conn.poll(STARTUP_S):  # a task's timeout starts once its child is up
            self.kill()
            raise WorkerDied(f"a pool process did not start within {STARTUP_S:g}s")
        self.receive(None)

    def call(self, key: int, blob: bytes, ctx, payload: tuple, timeout: float | None):
        """Call function `key` with `payload` (args, kwargs, context fields) in the task context `ctx`."""
        self.ready = False
        try:
            if key not in self.known:
                self.conn.send_bytes(serialize.dumps(("fn", key, blob)))
                self.known.add(key)
            # A run's parameters go once per child, not with each of its (maybe 100 000) calls.
            if ("params", ctx.run_id) not in self.known:
                self.conn.send_bytes(serialize.dumps(("params", ctx.run_id, dict(ctx.params))))
                self.known.add(("params", ctx.run_id))
            self.conn.send_bytes(serialize.dumps(("call", key) + payload))
        except OSError:
            raise self.died() from None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            kind, body = self.receive(deadline)
            if kind == "log":
                serialize.emit_forwarded(body)
                continue
            self.ready = True
            if kind == "ok":
                return body
            raise rebuild_error(*body)

    def receive(self, deadline: float | None) -> tuple:
        from flowspec.runner import TaskTimeout

        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and (remaining <= 0 or not self.conn.poll(remaining)):
            raise TaskTimeout()
        try:
            return serialize.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            raise self.died() from None

    def died(self) -> WorkerDied:
        try:
            code = self.proc.wait(5)
        except Exception:  # still running though its socket broke: say so
            code = None
        how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        return WorkerDied(f"the pool process running the task died ({how})")

    def stop(self) -> None:
        self.conn.close()  # the child sees end-of-file and exits (closing twice is harmless)
        try:
            self.proc.wait(5)
        except Exception:
            pass
        self.kill()

    def kill(self) -> None:
        if self.gone:
            return
        self.gone = True
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.conn.close()


def rebuild_error(blob: bytes | None, type_name: str, text: str, tb: str) -> BaseException:
    """The child's exception, or, when it does not unpickle here, one with the same name and
    message; either way it carries the child's traceback text for the run's log."""
    exc = None
    if blob is not None:
        try:
            exc = serialize.loads(blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = type(type_name, (Exception,), {})(text)
    exc._flowspec_traceback = tb
    return exc


# -- the child process --------------------------------------------------------------------------
def child_main(fd: int, level: int, stdout_is_stderr: bool) -> None:
    """Run calls sent by the parent until the socket closes. Ctrl-C, SIGTERM and SIGHUP sent to
    the whole process group are the parent's business: it cancels the run and stops its children."""
    from multiprocessing.connection import Connection

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    conn = Connection(fd)
    sys.stderr = logs.whole_lines(2)  # the parent writes this child's log lines to the same stderr as they come
    if stdout_is_stderr:
        sys.stdout = sys.stderr
    from flowspec import task_output

    task_output.install()  # for the child's life: its tasks' print() comes back as their log lines
    lock = threading.Lock()  # tasks may log from threads of their own

    def send_log(data: dict) -> None:
        with lock:
            conn.send_bytes(serialize.dumps(("log", data)))

    logger = logging.getLogger("flowspec")
    logger.handlers = [serialize.ForwardingHandler(send_log)]
    logger.setLevel(level)
    logger.propagate = False
    functions: dict = {}
    params: dict = {}  # run id -> its parameters
    conn.send_bytes(serialize.dumps(("ready", None)))
    while True:
        try:
            message = serialize.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if message[0] == "fn":
            functions[message[1]] = serialize.loads(message[2])
            continue
        if message[0] == "params":
            if len(params) >= 8:  # a pool lives for one run; this only bounds what a reuse could keep
                params.clear()
            params[message[1]] = MappingProxyType(message[2])
            continue
        _, key, args, kwargs, fields = message
        answer = _answer(functions[key], args, kwargs, fields, params.get(fields[0], MappingProxyType({})))
        with lock:
            conn.send_bytes(answer)


def _answer(fn, args: tuple, kwargs: dict, fields: tuple, params) -> bytes:
    from flowspec import context, task_output

    run_id, flow, task, index, attempt, run_name = fields
    token = context.set_current(context.TaskContext(run_id, flow, params, task, index, attempt, run_name))
    try:
        reply = ("ok", fn(*args, **kwargs))
    except BaseException as exc:  # SystemExit too: the parent decides what it means
        reply = ("err", _error_body(exc))
    finally:
        if task_output.partial:  # a line the task left unfinished comes back before its outcome
            task_output.end_of_attempt()
        context.reset(token)
    try:
        return serialize.dumps(reply)
    except Exception as exc:
        problem = TypeError(f"the task's result cannot be sent back from the pool process: {exc}")
        return serialize.dumps(("err", _error_body(problem)))


def _error_body(exc: BaseException) -> tuple:
    from flowspec.runner import user_traceback

    try:
        blob = serialize.dumps(exc)
        serialize.loads(blob)  # some exceptions pickle but do not unpickle: check here
    except Exception:
        blob = None
    return blob, type(exc).__name__, str(exc), user_traceback(exc)
