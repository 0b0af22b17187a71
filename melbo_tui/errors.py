"""Errors a user can cause, typed so that the CLI and the TUI can render each as one line.

Everything raised on purpose by the engine derives from `MelboError`; anything else reaching
the edge is a bug and is still shown as one line (with a hint to report it).
"""

from __future__ import annotations


class MelboError(Exception):
    """Base of every error the user can cause; its message is the one line shown."""


class ModelError(MelboError):
    """The model could not be found, loaded, or does not fit the request."""


class BankError(MelboError):
    """A vector bank file is missing, corrupt, or does not fit the model."""


class InputError(MelboError):
    """A command-line or in-app value is malformed (prompt, selection, scale, layer...)."""


class OutputError(MelboError):
    """An output file cannot be written (a bad path, no permission, a full disk)."""
