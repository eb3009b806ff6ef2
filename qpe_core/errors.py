"""User-facing errors.

A :class:`QpeError` is an expected failure caused by the input (a corrupt file,
an unknown channel, a time off the slot grid...).  The CLI prints its message on
one line without a traceback; anything else is a bug and shows a traceback.
Messages always name the file, slot or field at fault.
"""


class QpeError(Exception):
    """Base class for errors caused by user input or data, not by a bug."""


class ConfigError(QpeError):
    """Invalid configuration value."""


class InputFileError(QpeError):
    """A granule or radar file cannot be read or does not match what was asked."""


class ArchiveError(QpeError):
    """The archive cube is missing, inconsistent or refuses a write."""


class MissingSlotError(ArchiveError):
    """A slot needed for a temporal stack is absent or incomplete."""
