"""Errors a job raises when it cannot go on; the entry point prints them as one `error: ...` line."""


class JobError(RuntimeError):
    """The run cannot continue (bad configuration, bad data, non-finite loss); the message says what to do."""
