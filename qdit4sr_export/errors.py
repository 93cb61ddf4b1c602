"""The one exception type for bad user input: the CLI prints its message on one line and exits non-zero."""


class UserError(ValueError):
    """Bad input from the user (a path, a key, a shape, an option); the message names the problem."""

    def __init__(self, message: str) -> None:
        # Keep messages to a single line: the CLI shows them verbatim.
        super().__init__(" ".join(str(message).split()))
