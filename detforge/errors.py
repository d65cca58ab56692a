"""Errors a user can act on, shared by the engine and the command line."""


class DetforgeError(Exception):
    """An error the user can fix; the command line prints its message as one line."""


class NonFiniteLossError(DetforgeError, RuntimeError):
    """The loss kept coming out NaN/inf: the run stops with advice instead of training on."""


class CheckpointError(ValueError):
    """A weights or checkpoint file that cannot be read, or is refused, or holds no weights."""
