"""The one exception type for mistakes a user can fix: the CLI prints its message, not a traceback."""


class UserInputError(ValueError):
    """A bad flag, file, row or environment that the message explains how to fix."""
