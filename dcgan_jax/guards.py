"""What keeps a run safe from its surroundings: one run per workdir, and signals that stop
training at a step boundary instead of in the middle of one."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import threading
import time

from dcgan_jax import report
from dcgan_jax.validation import UserError

LOCK_FILE = ".lock"


class WorkdirLock:
    """An exclusive lock on `workdir` for the lifetime of a run.

    flock(2) locks die with their process, so a run killed with SIGKILL never leaves a
    stale lock behind. File systems without flock (some network mounts) run unlocked,
    with a warning.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._file = None

    def __enter__(self) -> WorkdirLock:
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            report.warning(f"no file locking on this platform; {self.path} is not locked.")
            return self
        handle = open(self.path, "a+")  # held open (and locked) for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(
                    f"workdir {os.path.dirname(self.path)!r} is in use by another training "
                    f"run ({holder}). Fix: wait for that run to finish, or pass another "
                    "--workdir."
                ) from e
            report.warning(f"cannot lock {self.path} ({e}); running without a lock.")
            return self
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc_info) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock
            self._file = None


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; rerunning resumes."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class GracefulStop:
    """Turns SIGTERM and SIGINT into a request to stop after the current step.

    The training loop polls `requested`. A second signal, while the first is being
    honoured, restores the default handlers and re-sends itself: the process exits at once
    (the checkpoint being written, if any, is left unfinished and ignored on restart).
    Handlers can only be installed from the main thread; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame) -> None:
        del frame
        if self.signum is not None:
            self._restore()
            print(f"\nSecond {signal.Signals(signum).name}: exiting now.", file=sys.stderr)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        print(
            f"\nReceived {signal.Signals(signum).name}: stopping after this step and saving a "
            "checkpoint (send it again to exit at once).",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()
