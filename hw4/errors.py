"""The one exception type for user mistakes: CLIs print it as one line and exit 2, Serve as a 4xx."""


class HW4Error(ValueError):
    """A mistake the user can fix (bad argument, missing data, unreadable checkpoint)."""
