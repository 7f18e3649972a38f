"""User-facing errors: the CLI prints their message as one line and exits with status 2."""


class UserError(Exception):
    """A problem with the user's input (file, option, data) rather than a bug in resnetlab."""


class RunInterrupted(Exception):
    """Ctrl-C during a run: the message says what was saved and the command that continues it (exit 130)."""
