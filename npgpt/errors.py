"""The errors npgpt raises on bad input. Each message is one line that says what is wrong and what to do."""


class NpgptError(Exception):
    """Base class: anything npgpt reports about its input (the CLI prints these as one line, no traceback)."""


class ConfigError(NpgptError, ValueError):
    """A config.json that is missing, unreadable or not a GPT-2 configuration."""


class WeightsError(NpgptError, ValueError):
    """A checkpoint that is missing, truncated, not safetensors, or does not fit the configuration."""


class ContextLengthError(NpgptError, ValueError):
    """A prompt that does not fit in the model's context window."""


class SettingsError(NpgptError, ValueError):
    """A generation setting out of its range (the message names the setting)."""
