"""One exception type for every mistake a user can fix; the CLI prints it as one line."""


class UserError(Exception):
    """A problem with the user's input (recipe, pool, model, arrays), explained in one line."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
