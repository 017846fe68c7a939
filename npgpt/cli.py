"""The `npgpt` command line. Bad input ends with one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__, load
from .errors import NpgptError


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage and the error on two lines; one is enough
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


positive_int.__name__ = "integer"


def build_parser() -> Parser:
    parser = Parser(prog="npgpt", description="GPT-2 inference and text generation in plain NumPy.")
    parser.add_argument("--version", action="version", version=f"npgpt {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    gen = commands.add_parser("generate", help="continue a prompt, streaming the text as it is produced")
    gen.add_argument("prompt", help="the text to continue ('' starts from <|endoftext|>)")
    gen.add_argument("--model", "-m", default="gpt2", help="model directory (config.json + model.safetensors)")
    gen.add_argument("--max-new-tokens", "-n", type=positive_int, default=50, help="at most this many tokens (50)")
    gen.add_argument("--temperature", "-t", type=float, default=None,
                     help="sampling temperature; 0 or unset means greedy")
    gen.add_argument("--seed", type=int, default=None, help="seed for sampling (same seed, same text)")
    gen.add_argument("--no-echo", action="store_true", help="print only the continuation, not the prompt")
    gen.set_defaults(run=run_generate)
    return parser


def run_generate(args) -> int:
    model = load(args.model)
    steps = model.stream_steps(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               seed=args.seed)
    out = sys.stdout
    if not args.no_echo:
        out.write(args.prompt)
        out.flush()
    reason = None
    for step in steps:
        out.write(step.text)
        out.flush()
        reason = step.finish_reason
    out.write("\n")
    out.flush()
    if reason == "context":
        print(f"npgpt: stopped: the text filled the model's context of {model.config.n_positions} tokens",
              file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        return args.run(args)
    except (NpgptError, OSError, ValueError, MemoryError) as e:
        if isinstance(e, BrokenPipeError):  # e.g. `npgpt generate ... | head -1`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        message = str(e) or type(e).__name__
        print(f"npgpt: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
