"""User-facing errors.

Every mistake a user can make (a bad config value, a missing dataset, unavailable weights) raises a
subclass of :class:`UserError`. Command-line entry points catch it, print its one-line message to
stderr and exit with status 2, so a user never sees a Python traceback for their own mistake.
"""

from __future__ import annotations

import functools
import math
import os
import reprlib
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USER_ERROR = 2
# 128 + SIGPIPE, what a shell reports for a command whose reader closed the pipe.
EXIT_BROKEN_PIPE = 141

F = TypeVar("F", bound=Callable[..., int | None])


class UserError(Exception):
    """A problem the user can fix; its message is one line and says what to do."""


class ConfigError(UserError):
    """A configuration value is unknown, of the wrong type or out of range.

    The message names the source (a file, or ``--set``), the dotted field, what was expected and what
    was given: ``quickstart.yaml: memory.size: expected an integer >= 0, got -5``.
    """

    def __init__(self, source: str, field: str, expected: str, got: object, *, got_text: str | None = None):
        self.source, self.field, self.expected, self.got = source, field, expected, got
        self.got_text = got_text if got_text is not None else describe_value(got)
        super().__init__(f"{source}: {field}: expected {expected}, got {self.got_text}")

    def relocated(self, source: str, prefix: str) -> ConfigError:
        """The same error seen from an enclosing config: a new source and a dotted field prefix."""
        return ConfigError(source, f"{prefix}{self.field}", self.expected, self.got, got_text=self.got_text)


# What a message shows of a rejected value: a bounded view, never the whole value. A value from a hostile
# file can be a string of megabytes, a list nested thousands deep or (through YAML aliases) a structure
# whose full repr has billions of characters; reprlib visits only a few items per level.
_VALUE_VIEW = reprlib.Repr()
_VALUE_VIEW.maxlevel = 3
_VALUE_VIEW.maxstring = _VALUE_VIEW.maxother = _VALUE_VIEW.maxlong = 60
_VALUE_VIEW.maxlist = _VALUE_VIEW.maxtuple = _VALUE_VIEW.maxdict = _VALUE_VIEW.maxset = 6
MAX_VALUE_TEXT = 60


def describe_value(value: object) -> str:
    """``-5``, ``'abc'`` (str), ``[1, 2]`` (list): the value and, where it helps, its type; at most about
    80 characters whatever the value's size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        # repr() of a huge int is slow and, past 4300 digits, refused by Python itself.
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        text = _VALUE_VIEW.repr(value)
    except Exception:  # a value whose repr fails says what it is instead
        text = f"<{type(value).__name__}>"
    if len(text) > MAX_VALUE_TEXT:
        text = text[: MAX_VALUE_TEXT - 3] + "..."
    if isinstance(value, (bool, int, float)) or value is None:
        return text
    return f"{text} ({type(value).__name__})"


class DatasetNotFoundError(UserError):
    """Dataset files are missing or inconsistent with the shipped split lists."""


class WeightsUnavailableError(UserError):
    """Model weights are neither cached nor downloadable."""


def exit_on_user_error(main: F) -> F:
    """Decorate a CLI ``main``: a :class:`UserError` becomes one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        except BrokenPipeError:
            # The reader of our output went away (`... | head`): stop quietly, as Unix tools do. Python would
            # otherwise print a traceback here and another one when it flushes stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise SystemExit(EXIT_BROKEN_PIPE) from None

    return wrapper  # type: ignore[return-value]
