"""Exceptions with messages that say what to do."""


class DSLMError(Exception):
    """A user-facing error (bad file, incompatible checkpoint, ...); the CLI prints it and exits 2."""


__all__ = ["DSLMError"]
