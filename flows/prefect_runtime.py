"""How the audit runs under Prefect without leaking patient data or noise, and without leaving servers behind.

- `data_free_errors` wraps a task (and `flow_errors` the flow): any exception raised inside is
  replaced by a `StageFailure` whose text names only the stage, a kind and the exception's type. Prefect
  records a failure in its database (state message), its logs (API and console) and, for a failed flow,
  pickles the exception into `$PREFECT_HOME/storage` (`exception_to_failed_state(..., write_result=True)`
  in prefect/flow_engine.py, whatever `persist_result` says). An exception message can quote data (an
  order id, a value), so no message of ours or of a library ever reaches Prefect: the one-line message
  for the user travels beside the exception and the command line prints it.
- `quiet_console()` keeps Prefect's logs of a failure (ERROR records, tracebacks, "Finished in state
  Failed") off the terminal: they go to the debug log (`debug_log_path()`), with everything else
  Prefect logs during the run. What reaches that file is data-free for the same reason.
- `guard_temporary_server()` makes Prefect's temporary API server (started when no PREFECT_API_URL is
  set) die with the run that started it, even after SIGKILL (`flows/server_guard.py`); its own output
  goes to the debug log too.
"""

from __future__ import annotations

import functools
import logging
import logging.handlers
import os
import threading
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

#: Kinds of failure and the exit status each gives (README "Exit status").
BAD_INPUT, IO, FAILURE = "bad input", "input/output failure", "unexpected failure"
EXIT_STATUS = {BAD_INPUT: 2, IO: 3, FAILURE: 3}
DEBUG_LOG_ENV = "IVIG_AUDIT_DEBUG_LOG"
_DEBUG_LOG_BYTES, _DEBUG_LOG_BACKUPS = 1_000_000, 3


def debug_log_path() -> Path:
    """Where the detail of a run's Prefect logs goes: $IVIG_AUDIT_DEBUG_LOG, else ivig-audit-debug.log in
    Prefect's home ($PREFECT_HOME, by default ~/.prefect). Owner-only, rotated at 1 MB."""
    if os.environ.get(DEBUG_LOG_ENV):
        return Path(os.environ[DEBUG_LOG_ENV]).expanduser()
    home = os.environ.get("PREFECT_HOME") or str(Path("~/.prefect").expanduser())
    return Path(home).expanduser() / "ivig-audit-debug.log"


class StageFailure(Exception):
    """A failure inside the flow, described without data (stage, kind, exception type).

    `detail` is the one-line message for the user; it is never part of the exception's text (`args`),
    so Prefect's state messages, logs and pickles never hold it.
    """

    def __init__(self, stage: str, kind: str, error_type: str, detail: str | None = None, token: str | None = None):
        super().__init__(f"{stage}: {kind} ({error_type}); the message is on the command line, not kept by Prefect")
        self.stage, self.kind, self.error_type = stage, kind, error_type
        self.detail = detail
        self.token = token

    def __reduce__(self):
        # Across a process boundary (a Dask worker) the detail travels with the exception; the flow
        # wrapper removes it before Prefect can store the flow's failure.
        return (StageFailure, (self.stage, self.kind, self.error_type, self.detail, self.token))

    @property
    def exit_status(self) -> int:
        """The exit status of the command line for this kind of failure."""
        return EXIT_STATUS[self.kind]


_DETAILS: dict[str, str] = {}
_DETAILS_LOCK = threading.Lock()


def _kind_and_detail(stage: str, exc: BaseException) -> tuple[str, str]:
    """What kind of failure an exception is, and the one line the user reads."""
    from pipeline.config.products import ProductDictionaryError
    from pipeline.config.rulepack import RulePackError
    from pipeline.ingest.errors import ExtractError
    from pipeline.warehouse import StoreError

    if isinstance(exc, (ExtractError, RulePackError, ProductDictionaryError)):
        return BAD_INPUT, _one_line(str(exc))
    if isinstance(exc, StoreError):
        return IO, _one_line(str(exc))
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return IO, f"the run failed on a file operation: {exc.strerror or type(exc).__name__}{where}"
    return FAILURE, (
        f"the audit failed unexpectedly in '{stage}' ({type(exc).__name__}); nothing was written; "
        f"the stack (without data) is in {debug_log_path()}"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"


def _log_stack(stage: str, exc: BaseException) -> None:
    """The failure's stack in the debug log: frames and exception types only (a message may quote data)."""
    chain, current = [], exc
    while current is not None and len(chain) < 5:
        frames = "".join(traceback.format_list(traceback.extract_tb(current.__traceback__)))
        chain.append(f"{type(current).__module__}.{type(current).__name__} (message withheld)\n{frames}")
        current = current.__cause__ or current.__context__
    log.debug("stage '%s' failed:\n%s", stage, "\ncaused by ".join(chain))


def to_stage_failure(stage: str, exc: BaseException) -> StageFailure:
    """Any exception as a StageFailure (a StageFailure from a task passes through unchanged)."""
    if isinstance(exc, StageFailure):
        return exc
    _log_stack(stage, exc)
    kind, detail = _kind_and_detail(stage, exc)
    return StageFailure(stage, kind, type(exc).__name__, detail)


def data_free_errors(fn: F) -> F:
    """Decorate a task function (under @task): its exceptions reach Prefect as a data-free StageFailure
    naming the function as the stage."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every exception, so none carries data into Prefect
            failure = to_stage_failure(fn.__name__, exc)
        raise _detached(failure)

    return wrapper  # type: ignore[return-value]


def flow_errors(fn: F) -> F:
    """Decorate the flow function (under @flow): the failure Prefect records and pickles holds no
    message; the message waits here for the command line (`failure_detail`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - see data_free_errors
            failure = _without_detail(to_stage_failure(fn.__name__, exc))
        raise _detached(failure)

    return wrapper  # type: ignore[return-value]


def _detached(failure: StageFailure) -> StageFailure:
    """The failure without the exception it replaced: no __cause__, __context__ or earlier traceback.

    `raise ... from None` only hides the context from a printed traceback; the original exception (and
    its message) stays attached, and a pickler that keeps exception chains (tblib's, which `distributed`
    installs) writes it into Prefect's result storage with the flow's failure. It is raised outside the
    `except` block, so Python attaches no context either.
    """
    failure.__cause__ = None
    failure.__context__ = None
    failure.__suppress_context__ = False
    return failure.with_traceback(None)


def _without_detail(failure: StageFailure) -> StageFailure:
    """The failure without its message, which stays in this process under a token.

    (A module function, not code inside the wrapper: a Dask worker pickles the flow's function by
    value, and must not meet the lock.)
    """
    token = uuid.uuid4().hex
    with _DETAILS_LOCK:
        _DETAILS[token] = failure.detail or ""
    return StageFailure(failure.stage, failure.kind, failure.error_type, None, token)


def failure_detail(failure: StageFailure) -> str:
    """The one-line message of a failure raised by the flow (kept in this process, never by Prefect)."""
    if failure.detail:
        return failure.detail
    with _DETAILS_LOCK:
        detail = _DETAILS.pop(failure.token or "", "")
    return detail or f"{failure.stage}: {failure.kind} ({failure.error_type})"


def is_io_failure(exc: BaseException) -> bool:
    """Whether a task failed on input/output (worth a retry: a locked database, a file still being copied)."""
    from pipeline.warehouse import StoreError

    if isinstance(exc, StageFailure):
        return exc.kind == IO
    return isinstance(exc, (StoreError, OSError))


# ------------------------------------------------------------------------------------ console and debug log
class _OwnerOnlyFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file readable by its owner only (it is created, and re-created on rollover, 0600)."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.chmod(self.baseFilename, 0o600)
        return os.fdopen(fd, self.mode.replace("w", "a") if "w" in self.mode else self.mode, encoding=self.encoding)


class _NoFailureNoise(logging.Filter):
    """Keeps a run's failure reports off the terminal: the command line prints one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or record.exc_info:
            return False
        message = record.getMessage() if record.args else str(record.msg)
        return not ("Finished in state Failed" in message or "Finished in state Crashed" in message)


_QUIET = threading.Lock()
_installed: dict[str, Any] = {}


def quiet_console() -> Path:
    """Route the run's Prefect logs to the debug log and keep failure reports off the terminal; the path."""
    from prefect.logging.handlers import PrefectConsoleHandler

    path = debug_log_path()
    root, stacks = logging.getLogger(), logging.getLogger(__name__)
    with _QUIET:
        previous = _installed.get("file")
        if previous is not None and Path(previous.baseFilename) == path.resolve():
            return path
        if previous is not None:  # the debug log moved ($IVIG_AUDIT_DEBUG_LOG changed): follow it
            for logger in (root, stacks):
                logger.removeHandler(previous)
            previous.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _OwnerOnlyFileHandler(path, maxBytes=_DEBUG_LOG_BYTES, backupCount=_DEBUG_LOG_BACKUPS, encoding="utf-8")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"))
        root.addHandler(handler)
        # The stacks of failures go to the file only (never to the terminal or Prefect's API).
        stacks.setLevel(logging.DEBUG)
        stacks.addHandler(handler)
        stacks.propagate = False
        noise = _NoFailureNoise()
        for logger in (root, logging.getLogger("uvicorn"), logging.getLogger("fastapi")):
            for console in logger.handlers:
                if isinstance(console, PrefectConsoleHandler) and not any(isinstance(f, _NoFailureNoise) for f in console.filters):
                    console.addFilter(noise)
        _installed["file"] = handler
    return path


def guard_temporary_server() -> None:
    """Make Prefect's temporary server (no PREFECT_API_URL) run under flows.server_guard, with its output
    in the debug log: it then stops when the run that started it ends, however it ends."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():  # a real server (or a test harness's): nothing temporary to guard
        return
    from prefect.server.api import server as server_module

    with _QUIET:
        if "server" in _installed:
            return
        real = server_module.subprocess
        log_path = debug_log_path()

        class _GuardedSubprocess:
            """subprocess as prefect.server.api.server sees it: Popen of `-m uvicorn` goes through the guard."""

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            @staticmethod
            def Popen(args, **kwargs):  # noqa: N802 - the name Prefect calls
                args = list(args)
                if args[1:3] == ["-m", "uvicorn"]:
                    args = [args[0], "-m", "flows.server_guard", str(os.getpid()), *args[1:]]
                    if "stdout" not in kwargs and "stderr" not in kwargs:
                        log_path.parent.mkdir(parents=True, exist_ok=True)
                        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                        kwargs["stdout"] = kwargs["stderr"] = fd
                        try:
                            return real.Popen(args, **kwargs)
                        finally:
                            os.close(fd)
                return real.Popen(args, **kwargs)

        server_module.subprocess = _GuardedSubprocess()
        _installed["server"] = real


def prepare_prefect_run() -> Path:
    """Everything `ivig-audit run` sets up before the flow starts; returns the debug log's path."""
    path = quiet_console()
    guard_temporary_server()
    return path


