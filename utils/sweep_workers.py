"""Long-lived sweep trial workers: a sweep's trials run one after another inside `--jobs`
worker processes instead of one fresh `train.py` process each (utils/sweeps.py, the default
`--trial_mode worker`).

Why: a study is hundreds of short trials. A fresh process pays the interpreter and torch
start-up (~1.5 s), the reads of the three splits and the first-call costs again for every
trial; a worker pays them once and keeps the splits in memory (`enable_split_cache`, keyed by
path and file identity, so a rewritten file is read again).

A worker runs each trial through `train.train_and_evaluate`, the body of `python train.py
... --eval_test`: the same Trainer, run directory, lock, checkpoints, metrics, resume and test
evaluation as a train.py process. Per trial it restores the process state it started with
(`ProcessState`: RNG states, torch threads and flags, logging handlers, signal handlers,
environment, working directory; W&B runs and process groups a trial left open are closed),
and its output (fds 1 and 2) goes to the trial's own log file.

Protocol: the runner starts `python utils/sweep_workers.py` in its own session (a terminal's
Ctrl-C reaches the runner only) and writes one JSON request per line to its stdin:
`{"kind": "train" | "eval", "argv": [train.py arguments], "log": path}`; the worker answers
on its original stdout with `{"started": pid}` when it takes the request, then
`{"rc": exit status}` when it is done: the status train.py would exit
with (0 done or stopped with a checkpoint, 1 diverged or crashed, 2 user error, 3 write
failure, 128 + N stopped by signal N before its trainer could checkpoint). `eval` runs
`train.evaluate_best` only (a trial trained by an earlier runner).

Signals and death: SIGTERM (the runner's `stop`) during training makes the trainer checkpoint
and return (train.py's behaviour); outside the trainer (loading, the test evaluation) it
aborts the trial, which a rerun resumes; an idle worker exits. EOF on stdin means the runner
closed the pool or died (kill -9 included): a watchdog thread then sends the worker SIGTERM,
so a running trial checkpoints, and the worker exits. A worker that dies is replaced by the
next trial that needs one.
"""
import gc
import json
import logging
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = REPO_ROOT   # run as `python utils/sweep_workers.py`: utils/ is no top level

logger = logging.getLogger(__name__)
SPLIT_CACHE_BYTES = 2 << 30   # per worker: the study's splits are a few MB each
CLOSE_WAIT_S = 60             # how long `WorkerPool.close` waits for a worker to exit
WORKER_SCRIPT = os.path.abspath(__file__)


# ============================================================================== worker side
class TrialInterrupted(BaseException):
    """SIGTERM/SIGINT outside the trainer's own handlers: abort the trial (or the idle wait).
    A BaseException, so that `except Exception` blocks of the trial do not swallow it."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, frame):
    raise TrialInterrupted(signum)


class ProcessState:
    """The per-process state a trial may change, captured once and restored before and after
    every trial, so that trials in one worker do not see each other."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self):
        import torch

        from utils.distributed import get_rng_state

        self.rng = get_rng_state()
        self.threads = torch.get_num_threads()
        self.dtype = torch.get_default_dtype()
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        self.cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
        self.grad = torch.is_grad_enabled()
        root = logging.getLogger()
        self.log_handlers, self.log_level = list(root.handlers), root.level
        self.handlers = {sig: signal.getsignal(sig) for sig in self.SIGNALS}
        self.environ = dict(os.environ)
        self.cwd = os.getcwd()

    def restore(self):
        import torch
        import torch.distributed as dist

        from utils.distributed import set_rng_state

        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        set_rng_state(self.rng)
        torch.set_num_threads(self.threads)
        torch.set_default_dtype(self.dtype)
        torch.use_deterministic_algorithms(self.deterministic)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = self.cudnn
        torch.set_grad_enabled(self.grad)
        root = logging.getLogger()
        for h in list(root.handlers):
            if h not in self.log_handlers:
                root.removeHandler(h)
                h.close()
        for h in self.log_handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(self.log_level)
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        if dict(os.environ) != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        os.chdir(self.cwd)


class _Output:
    """Point fds 1 and 2 (and so sys.stdout/sys.stderr, logging) at `path` (appended) for a
    trial, and back at the worker's own stderr afterwards."""

    def __init__(self):
        self.home = os.dup(2)

    def to(self, path):
        sys.stdout.flush()
        sys.stderr.flush()
        if path is None:
            fd = os.dup(self.home)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)


def run_request(train, request):
    """Run one request in this process; returns the exit status train.py would have."""
    from utils.errors import REPORTED

    args = train.build_parser().parse_args(request["argv"])
    try:
        if request["kind"] == "eval":
            train.evaluate_best(args)
        else:
            train.train_and_evaluate(args)
        return 0
    except TrialInterrupted as e:
        logging.warning("stopped by signal %d before the trainer could checkpoint", e.signum)
        return 128 + e.signum
    except REPORTED as e:
        print("error: " + " ".join(str(e).split("\n")), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:   # a second SIGINT inside the trainer
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except Exception:
        logging.exception("trial failed")
        return 1


def serve(requests, replies):
    """The worker's main loop: requests (file, JSON lines) -> replies (file, JSON lines)."""
    from utils.data_utils import enable_split_cache
    from utils.logging_utils import config_logger
    from utils.malloc_tuning import configure_malloc

    configure_malloc()
    config_logger()
    import train   # torch, the model and the trainer: imported once for every trial

    enable_split_cache(SPLIT_CACHE_BYTES)
    # torch & co. are ~170K objects that live as long as the worker (after its first trial,
    # with the modules trials import, ~290K); every full collection walks them all (0.15-0.25
    # s each, a fifth of a 64-sample trial's overhead in bench_sweep). Frozen, the collector
    # skips them: the collection after a trial then walks only what the trial left
    gc.freeze()
    for sig in ProcessState.SIGNALS[:2]:
        signal.signal(sig, _interrupt)
    state = ProcessState()
    output = _Output()
    inbox = queue.Queue()
    busy = threading.Event()
    closed = threading.Event()

    def watchdog():   # the only reader of stdin: EOF = the runner closed us or died
        try:
            for line in requests:
                inbox.put(json.loads(line))
        except (ValueError, OSError):
            pass      # a broken pipe or line: as good as closed
        closed.set()
        if busy.is_set():
            os.kill(os.getpid(), signal.SIGTERM)   # the running trial checkpoints
        inbox.put(None)

    threading.Thread(target=watchdog, daemon=True).start()
    while True:
        try:
            request = inbox.get()
        except TrialInterrupted:
            return
        if request is None:
            return
        busy.set()
        if closed.is_set():   # the runner is gone: run nothing more
            return
        try:
            replies.write(json.dumps({"started": os.getpid()}) + "\n")
            replies.flush()
            state.restore()
            output.to(request["log"])
            rc = run_request(train, request)
        except TrialInterrupted as e:   # just before or after the trial itself
            rc = 128 + e.signum
        except BrokenPipeError:
            return
        finally:
            output.to(None)
            state.restore()
            gc.collect()   # a trial's leftovers (its run-directory lock included) go now
            gc.freeze()    # what survived is the worker's (modules a trial imported, caches)
            busy.clear()
        try:
            replies.write(json.dumps({"rc": rc}) + "\n")
            replies.flush()
        except (BrokenPipeError, TrialInterrupted):
            return


def main():
    # replies go to the original stdout only; anything printed goes to fd 2 (the trial log)
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    serve(sys.stdin, replies)


# ============================================================================== runner side
class TrialWorker:
    """One worker process (runner side). `run(request)` -> the trial's exit status."""

    def __init__(self, python, cwd, env, log_path):
        with open(log_path, "a") as log:
            self.proc = subprocess.Popen(
                [python, WORKER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, cwd=cwd, env=env, text=True, bufsize=1, start_new_session=True)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def run(self, request):
        """Send `request`, wait for its answer: the exit status. None: the worker died
        before it started the request (another worker may run it); a worker that died
        during the request returns its own (non-zero) exit status."""
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            started = self.proc.stdout.readline()
            line = self.proc.stdout.readline() if started else ""
        except OSError:   # a broken pipe: the worker is gone
            started = line = ""
        if line:
            return int(json.loads(line)["rc"])
        self.close(wait_s=5)
        if not started:
            return None
        return self.proc.returncode if self.proc.returncode else 1

    def signal(self, sig):
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def close(self, wait_s=CLOSE_WAIT_S):
        """Close stdin (the worker exits after its trial) and reap it; SIGKILL after wait_s."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            logger.warning("sweep worker %d did not exit in %g s: killed", self.pid, wait_s)
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class WorkerPool:
    """At most `size` TrialWorkers, started when first needed and reused; thread-safe.

    `run(kind, argv, log_path)` runs a request on a free worker and returns its exit
    status, or None if `stopping()` is true before it starts. A dead worker is replaced; a
    request whose worker died before starting it is given to a new one (once).
    `signal_busy(sig)` signals the workers that run a trial now.
    """

    def __init__(self, size, python, cwd, env, log_path, stopping=lambda: False):
        self._free = queue.Queue()
        for _ in range(size):
            self._free.put(None)    # a slot without a worker yet
        self._spawn = lambda: TrialWorker(python, cwd, env, log_path)
        self._lock = threading.RLock()
        self._busy = set()
        self._all = []
        self._stopping = stopping

    def run(self, kind, argv, log_path):
        worker = self._free.get()
        try:
            for attempt in range(2):
                with self._lock:
                    if self._stopping():
                        return None
                    if worker is None or not worker.alive():
                        if worker is not None:
                            worker.close(0)
                        worker = self._spawn()
                        self._all.append(worker)
                    self._busy.add(worker)
                with open(log_path, "a") as log:
                    log.write(f"$ {shlex.join(['train.py'] + list(argv))}  "
                              f"# {kind} in sweep worker {worker.pid}\n")
                rc = worker.run({"kind": kind, "argv": list(argv), "log": log_path})
                with self._lock:
                    self._busy.discard(worker)
                if rc is not None:
                    return rc
            return worker.proc.returncode or 1
        finally:
            with self._lock:
                self._busy.discard(worker)
            self._free.put(worker)

    def signal_busy(self, sig):
        with self._lock:
            workers = list(self._busy)
        for w in workers:
            w.signal(sig)
        return len(workers)

    def close(self):
        with self._lock:
            workers, self._all = self._all, []
        for w in workers:
            if w.proc.returncode is None:
                w.close()


if __name__ == "__main__":
    main()
