"""The one exception type the CLI turns into a single readable line."""


class CowlabError(Exception):
    """A user-facing failure: the message is the whole story, no traceback needed."""


class Unavailable(CowlabError):
    """A backend or tool that cannot run here; carries the reason and how to get it."""

    def __init__(self, what: str, reason: str, hint: str = ""):
        self.what, self.reason, self.hint = what, reason, hint
        msg = f"{what} is unavailable: {reason}"
        if hint:
            msg += f" (to get it: {hint})"
        super().__init__(msg)


class NotApplicable(CowlabError):
    """A case that does not apply to this driver (an option it lacks, a backing it can't use).
    Recorded as a skipped sample with this reason, never silently dropped."""
