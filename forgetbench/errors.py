"""The one exception type the CLI turns into a single clear error line."""

import difflib
from collections.abc import Iterable


class ForgetbenchError(Exception):
    """A user-facing error: bad input, missing data, a plugin conflict.

    The CLI prints its message as one line on stderr and exits non-zero.
    """


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, else the list of all choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (did you mean one of: {', '.join(choices)}?)" if choices else ""
