"""Errors a user can cause, typed so that the CLI and the TUI can render each as one line.

Everything raised on purpose by the engine derives from `MelboError`; anything else reaching
the edge is a bug and is still shown as one line (with a hint to report it).
"""

from __future__ import annotations

import re
from collections.abc import Callable


class MelboError(Exception):
    """Base of every error the user can cause; its message is the one line shown.

    Engine errors speak of parameters, not flags: a parameter's name is written in backticks
    (`` `num_vectors` must be positive, got 0 ``) so that each face spells it its own way (`spell`):
    the CLI as its flag (`--num-vectors must be ...`), the explorer and a notebook as the plain name.
    """


_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def spell(exc: BaseException, name: Callable[[str], str] = lambda parameter: parameter) -> str:
    """The message of `exc` with every backticked parameter name rendered by `name`."""
    return _PARAMETER.sub(lambda match: name(match.group(1)), str(exc))


class ModelError(MelboError):
    """The model could not be found, loaded, or does not fit the request."""


class BankError(MelboError):
    """A vector bank file is missing, corrupt, or does not fit the model."""


class InputError(MelboError):
    """A command-line or in-app value is malformed (prompt, selection, scale, layer...)."""


class OutputError(MelboError):
    """An output file cannot be written (a bad path, no permission, a full disk)."""


class Stopped(Exception):  # noqa: N818  (not an error: the caller asked to stop)
    """Raised inside a long computation when its `should_stop()` callback fires."""
