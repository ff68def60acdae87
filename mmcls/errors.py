"""The base class of errors caused by the user's input (data, config, files), not by a bug.

The CLI prints these as one line naming the file/record/field and exits with status 2; anything else is a
bug and keeps its traceback.
"""

import re


class MmclsError(Exception):
    """Bad input: the message says which file, record, field or key, and what is wrong with it."""


# Besides MmclsError: file-system problems of the user's paths (a missing input, a folder where a file is
# expected, no permission to write the output) are reported the same way.
USER_ERRORS: tuple[type[BaseException], ...] = (
    MmclsError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def unwrap_worker_report(text: str, class_name: str) -> tuple[str, str | None]:
    """``(message, report)`` if ``text`` is torch's report of ``class_name`` raised in a DataLoader worker.

    torch's DataLoader re-raises a worker's exception in the main process as ``type(exc)(report)``, where the
    report reads "Caught X in DataLoader worker process N.\\nOriginal Traceback ..." and ends with the line
    "package.module.X: <message>" (the last such line: a chained cause is printed before the exception).
    Returns ``(text, None)`` for any other text, so error classes can call it on every one-string construction.
    """
    if not text.startswith(f"Caught {class_name} "):
        return text, None
    lines = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(class_name)}: ", text, re.MULTILINE))
    if not lines:
        return text, None
    return text[lines[-1].end() :].strip(), text
