"""The one error type the CLI turns into a single line and exit code 2."""


class RbenchError(Exception):
    """A problem the user can fix: bad input, a missing file, a budget a method broke.

    The message is one sentence that says what is wrong and what to do. The CLI prints it without a
    traceback and exits with code 2; nothing half-written is left behind.
    """


def nearest(name: str, choices: list[str]) -> str:
    """' (did you mean X?)' for the closest known name, or '' when nothing is close."""
    import difflib

    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
