"""The exception type for bad input that a user can fix (world_models, which imports nothing of
pipeline, raises its own `WorldModelError`; the CLI treats the two alike)."""


class UserError(Exception):
    """Bad input: the CLI prints the message as one line on stderr and exits with code 2.

    The message says what is wrong and what to do about it.
    """
