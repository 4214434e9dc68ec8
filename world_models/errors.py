"""The exception world_models raises for bad input that a user can fix."""


class WorldModelError(ValueError):
    """Bad world-model input: an unknown world model, preset or setting, a setting that would
    reshape trained weights, episodes too short or too few for what was asked.

    The message says what is wrong and what to do about it; the `pvr-pipe` command prints it as
    one line on stderr and exits with code 2, as it does for `pipeline.errors.UserError`.
    """
