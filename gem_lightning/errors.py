"""Errors caused by the user's input (folders, files, settings): reported without a traceback."""


class UserInputError(ValueError):
    """Something the user gave cannot be used; the message names it and says how to fix it."""
