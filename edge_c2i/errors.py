"""The error edge-c2i raises for bad input, and the notes written to stderr.

``EdgeC2IError`` is a ValueError whose message says what is wrong and what to do,
naming the library's parameter (``clusters``, ``top_k``); the command line prints
it as one line, adding the flag that sets that parameter.  Anything else that
escapes is a bug in edge-c2i, not the user's input, and keeps its traceback.
"""

import sys

QUIET = False  # set by the CLI's --quiet


class EdgeC2IError(ValueError):
    """Bad input from the user: the message says what is wrong and what to do."""


UserError = EdgeC2IError  # the name used before 0.2, kept for scripts that catch it


def note(message: str) -> None:
    """A progress note or warning for people: stderr, never stdout (stdout holds results)."""
    if not QUIET:
        print(f"edge-c2i: {message}", file=sys.stderr, flush=True)
