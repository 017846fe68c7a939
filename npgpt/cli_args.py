"""What the `npgpt` commands share: the parser (errors on one line), the model flags and the decoding flags,
turned into the settings generation takes."""

from __future__ import annotations

import argparse

from . import load


GENERATE_BAR = 100  # generate draws a progress bar for more new tokens than this


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage and the error on two lines; one is enough
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def integer_from(low: int, high: int | None = None):
    """An argparse type: an integer >= low, and <= high if given (argparse names it "integer" in its errors)."""
    def integer(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}" if high is None
                                             else f"must be from {low} to {high}, got {value}")
        return value
    return integer


non_negative_int, positive_int, port_number = integer_from(0), integer_from(1), integer_from(0, 65535)
milliseconds_to_1s = integer_from(0, 1000)


def word_value(text: str) -> tuple[str, float]:
    word, sep, value = text.rpartition("=")
    if not sep or not word:
        raise argparse.ArgumentTypeError(f"expected WORD=VALUE (e.g. gonna=-5), got {text!r}")
    try:
        return word, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the value in {text!r} is not a number") from None


word_value.__name__ = "WORD=VALUE"


def early_stopping(text: str):
    choices = {"true": True, "false": False, "never": "never"}
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError(f"choose true, false or never, not {text!r}")
    return choices[text.lower()]


early_stopping.__name__ = "true|false|never"


MODEL_NAMES = "a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, org/name) or a directory with " \
              "config.json and model.safetensors"


def add_model_arguments(parser, positional: bool = False, default: str | None = "gpt2", help: str | None = None):
    """Which model a command uses, as --model NAME or as its positional argument (download, inspect), with the
    hub revision and --quiet for the download progress bar. args.model holds it either way."""
    help = help or f"{MODEL_NAMES} ({default})"
    if positional:
        parser.add_argument("model", nargs="?" if default else None, default=default, help=help)
    else:
        parser.add_argument("--model", "-m", default=default, help=help)
    parser.add_argument("--revision", help="hub branch, tag or commit (default: main)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars (downloads, long work)")


def progress_setting(args) -> bool | None:
    """A study function's progress=: None (a bar when stderr is a terminal), False with --quiet."""
    return False if getattr(args, "quiet", False) else None


def load_model(args):
    return load(args.model, revision=args.revision, progress=False if args.quiet else None)


def add_decoding_arguments(parser):
    """Flags for every decoding rule (named as the Python keywords, with dashes)."""
    g = parser.add_argument_group("decoding rules (greedy unless a sampling setting is given)")
    g.add_argument("--temperature", "-t", type=float, help="sampling temperature; 0 means greedy")
    g.add_argument("--top-k", type=int, help="sample among the k most likely tokens (0: off)")
    g.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set holding probability p")
    g.add_argument("--min-p", type=float, help="drop tokens below min_p times the top probability")
    g.add_argument("--typical-p", type=float, help="typical sampling mass")
    g.add_argument("--repetition-penalty", type=float, help="> 1 discourages tokens already present")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="OpenAI's presence penalty (-2..2)")
    g.add_argument("--frequency-penalty", type=float, default=0.0, help="OpenAI's frequency penalty (-2..2)")
    g.add_argument("--bias", type=word_value, action="append", default=[], metavar="WORD=VALUE",
                   help="add VALUE to the logits of WORD's tokens (or of a token id); repeatable")
    g.add_argument("--ban", action="append", default=[], metavar="WORD",
                   help="never generate WORD (with or without a leading space); repeatable")
    g.add_argument("--no-repeat-ngram-size", type=non_negative_int, default=0, help="forbid repeating n-grams")
    g.add_argument("--min-new-tokens", type=non_negative_int, default=0, help="no end-of-text before this many")
    g.add_argument("--seed", type=int, help="seed for sampling (same seed, same text)")


def decoding_settings(args, tokenizer) -> dict:
    """The decoding flags as generate()'s keyword settings (flags not given are left out)."""
    settings = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                    typical_p=args.typical_p, repetition_penalty=args.repetition_penalty,
                    presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                    no_repeat_ngram_size=args.no_repeat_ngram_size, min_new_tokens=args.min_new_tokens,
                    seed=args.seed)
    if args.bias:
        settings["logit_bias"] = dict(args.bias)
    if args.ban:
        settings["bad_words_ids"] = [tokenizer.encode(form) for w in args.ban for form in (w, " " + w)]
    return {k: v for k, v in settings.items() if v is not None}


def generation_settings(args, tokenizer) -> dict:
    """All of `npgpt generate`'s flags as generate()'s keyword settings."""
    settings = decoding_settings(args, tokenizer)
    settings.update(max_new_tokens=args.max_new_tokens, stop=args.stop, n=args.n, num_beams=args.num_beams,
                    length_penalty=args.length_penalty, early_stopping=args.early_stopping,
                    truncate_prompt=args.truncate_prompt, sliding_window=args.sliding_window,
                    prompt_lookup_num_tokens=args.prompt_lookup_num_tokens)
    if args.logprobs is not None:
        settings.update(logprobs=True, top_logprobs=args.logprobs)
    return settings
