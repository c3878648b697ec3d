"""The one exception type the CLI turns into a single clear error line."""

import difflib
from collections.abc import Iterable


class ForgetbenchError(Exception):
    """A user-facing error: bad input, missing data, a plugin conflict.

    The CLI prints its message as one line on stderr and exits non-zero. ``run_id`` is set
    by the runner when the error ended a run it had started (the CLI names the run).
    """

    run_id: int | None = None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, else the list of all choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (did you mean one of: {', '.join(choices)}?)" if choices else ""


def interrupt(signum: int, _frame) -> None:
    """A signal handler (SIGTERM): the signal as an :class:`Interrupted`, which marks the run
    in progress ``interrupted`` as Ctrl-C does."""
    raise Interrupted(signum)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM while a run was in progress.

    ``signum`` is the signal (the CLI exits ``128 + signum``: 130 or 143); ``run_id`` is the
    run marked ``interrupted``, once the runner knows it.
    """

    def __init__(self, signum: int, run_id: int | None = None):
        super().__init__(f"signal {signum}" + (f" in run {run_id}" if run_id else ""))
        self.signum = signum
        self.run_id = run_id
