"""The one exception type for bad input that a user can fix."""


class UserError(Exception):
    """Bad input: the CLI prints the message as one line on stderr and exits with code 2.

    The message says what is wrong and what to do about it.
    """
