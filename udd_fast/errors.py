class UDDError(ValueError):
    """A problem with the user's input, stated in one line with the fix; the CLI prints it without a traceback."""


class Interrupted(UDDError):
    """A run stopped by Ctrl-C or SIGTERM; the message says what was kept and how to resume."""
