"""The errors npgpt raises on bad input. Each message is one line that says what is wrong and what to do.

Every one is an `NpgptError` (the CLI prints these as one line and exits 1, never a traceback). Those about a
value also derive from ValueError, so code written against plain Python exceptions keeps working.
"""

import difflib
import functools
import inspect


class NpgptError(Exception):
    """Base class: anything npgpt reports about its input, its files or its environment."""


class ConfigError(NpgptError, ValueError):
    """A config.json that is missing, unreadable or not a GPT-2 configuration."""


class WeightsError(NpgptError, ValueError):
    """A checkpoint that is missing, truncated, not safetensors, non-finite, or does not fit the configuration."""


class TokenizerError(NpgptError, ValueError):
    """A vocabulary or merges file that is not a GPT-2 BPE tokenizer, or text and ids it cannot take."""


class InputError(NpgptError, ValueError):
    """A prompt or token ids that are not valid input (wrong type, shape, or ids outside the vocabulary)."""


class ContextLengthError(InputError):
    """A prompt that does not fit in the model's context window."""


class SettingsError(NpgptError, ValueError):
    """A generation or study setting that is unknown or out of its range (the message names the setting)."""


class DistributionError(NpgptError, ArithmeticError):
    """A next-token distribution that cannot be sampled (NaN, every token removed, no probability mass):
    the message names the setting or the tensor that made it so."""


class HubError(NpgptError):
    """A model that cannot be fetched: not found, unreachable, refused or corrupt."""


class BusyError(NpgptError):
    """The scheduler's queue is full (a server answers 429): try again later, or allow more waiting jobs."""


class PromptTruncatedWarning(UserWarning):
    """truncate_prompt=True cut a prompt that did not fit the context: the message says what was kept."""


def did_you_mean(name, known) -> str:
    """'; did you mean X?' with the known name closest to `name`, or '; known: ...' when none is close."""
    close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else f"; known: {', '.join(sorted(known))}"


def refuse_unknown_keywords(error: type[NpgptError]):
    """Class decorator for a dataclass: a misspelt keyword (GPT2Config(n_layers_=2)) is `error`, naming the
    closest field, rather than Python's TypeError from the generated __init__."""
    def decorate(cls):
        init = cls.__init__
        known = set(inspect.signature(init).parameters) - {"self"}

        @functools.wraps(init)
        def checked_init(self, *args, **kwargs):
            unknown = sorted(set(kwargs) - known)
            if unknown:
                raise error(f"{cls.__name__}: unknown field {unknown[0]!r}{did_you_mean(unknown[0], known)}")
            init(self, *args, **kwargs)
        cls.__init__ = checked_init
        return cls
    return decorate
