"""One exception type for problems a user can fix (bad input, missing files).

The CLI turns it into one line on stderr and exit code 2, never a traceback.
"""


class LeaderError(Exception):
    """A problem with the user's input or environment, with a message saying what to do."""
