"""The library's one output channel: progress lines and warnings, printed by process 0.

Every process of a multi-process run executes the same code; only process 0 speaks, so
each line appears once. Warnings are lines that start with "warning: ". Errors that end a
command go to stderr as one "error: ..." line (validation.exit_on_user_error).
"""

from __future__ import annotations

import jax


def _is_primary() -> bool:
    return jax.process_index() == 0


def info(message: str) -> None:
    """A progress line (process 0 only)."""
    if _is_primary():
        print(message, flush=True)


def warning(message: str) -> None:
    """A warning line, "warning: <message>" (process 0 only)."""
    if _is_primary():
        print(f"warning: {message}", flush=True)
