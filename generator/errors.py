"""The errors the CLI turns into one line (no traceback): bad input, and a cancelled session."""

__all__ = ["Cancelled", "ReprostackError"]


class ReprostackError(Exception):
    """A user-facing failure: the message names the field or step, the value and what to do."""


class Cancelled(ReprostackError):
    """The user stopped the session (Ctrl-C at a prompt, or no at the confirmation); nothing was written."""

    def __init__(self, message: str, interrupted: bool = False) -> None:
        super().__init__(message)
        self.interrupted = interrupted  # Ctrl-C (exit 130), rather than a "no" (exit 1)
