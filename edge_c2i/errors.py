"""The exception the CLI turns into a one-line message, and the notes written to stderr."""

import sys

QUIET = False  # set by the CLI's --quiet


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do."""


def note(message: str) -> None:
    """A progress note or warning for people: stderr, never stdout (stdout holds results)."""
    if not QUIET:
        print(f"edge-c2i: {message}", file=sys.stderr, flush=True)
