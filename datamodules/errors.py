"""The error users get for a mistake in their config or data, caught and printed by train.py."""


class ConfigError(ValueError):
    """A wrong option, path or value: the message names the option and the fix."""
