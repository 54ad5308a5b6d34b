"""The one error type the CLI turns into a one-line message (no traceback for bad input)."""


class ReprostackError(Exception):
    """A user-facing failure: the message names the field or step, the value and what to do."""
