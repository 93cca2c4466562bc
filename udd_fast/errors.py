class UDDError(ValueError):
    """A problem with the user's input, stated in one line with the fix; the CLI prints it without a traceback."""
