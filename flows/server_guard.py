"""Run Prefect's temporary API server so that it never outlives the run that started it.

    python -m flows.server_guard PARENT_PID -m uvicorn ARGS...

`flows.prefect_runtime.guard_temporary_server` makes Prefect start its temporary server (uvicorn)
through this module. A watchdog thread polls the parent: when the run that started the server is gone
(even after SIGKILL, which runs no atexit handler), the process is re-parented, and the watchdog stops
uvicorn with SIGTERM (a graceful shutdown of its SQLite database), then exits for good. Polling works
whatever thread of the run started the server (PR_SET_PDEATHSIG would fire when that thread ends) and
on any POSIX system.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

POLL_SECONDS = 0.5
GRACE_SECONDS = 10.0


def _watch(parent: int) -> None:
    """Stop this process once its parent has died (this process was re-parented)."""
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_SECONDS)
    os._exit(0)


def main(argv: list[str]) -> None:
    """Watch PARENT_PID, then run the module named after -m with the remaining arguments."""
    parent, flag, module, *rest = argv
    if flag != "-m":
        raise SystemExit("usage: python -m flows.server_guard PARENT_PID -m MODULE ARGS...")
    if os.getppid() != int(parent):  # the run died before the server even started
        raise SystemExit(0)
    threading.Thread(target=_watch, args=(int(parent),), name="ivig-audit-server-guard", daemon=True).start()
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
