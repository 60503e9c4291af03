"""User-facing errors: one clear line, a non-zero exit, no traceback.

Anything the user can fix (a bad config key, a malformed data row, a missing model) raises
`RetortError`; the CLI prints its message and exits with status 2. Bugs stay ordinary exceptions.
"""


class RetortError(Exception):
    """An error caused by the user's input, with a message that names what to fix."""


class ConfigError(RetortError):
    """A config key or value is wrong."""


class DataError(RetortError):
    """A data file is malformed (the message names file, line and field)."""


class ModelError(RetortError):
    """A model could not be loaded or does not fit its role."""


class MissingExtraError(RetortError):
    """An optional dependency is not installed."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency lazily, or fail naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{purpose} needs the '{module}' package: pip install 'retort[{extra}]' ({e})"
        ) from None


class ApiError(RetortError):
    """A server behind an OpenAI-compatible API refused or failed a request for good."""
