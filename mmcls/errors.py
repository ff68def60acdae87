"""The base class of errors caused by the user's input (data, config, files), not by a bug.

The CLI prints these as one line naming the file/record/field and exits with status 2; anything else is a
bug and keeps its traceback.
"""


class MmclsError(Exception):
    """Bad input: the message says which file, record, field or key, and what is wrong with it."""


USER_ERRORS: tuple[type[BaseException], ...] = (MmclsError, FileNotFoundError)
