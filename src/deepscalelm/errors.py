"""Exceptions with messages that say what to do."""


class DSLMError(Exception):
    """A user-facing error (bad file, incompatible checkpoint, ...); the CLI prints it and exits 2."""


def with_article(word: str) -> str:
    """``word`` preceded by "a" or "an" as it is pronounced by its first letter ("an encoder",
    "a decoder", "an encoder-decoder", "a vit"); for messages."""
    return ("an " if word[:1].lower() in "aeiou" and word[:1] else "a ") + word


__all__ = ["DSLMError", "with_article"]
