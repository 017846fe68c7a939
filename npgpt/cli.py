"""The `npgpt` command line. Bad input ends with one line on stderr and a non-zero exit, never a traceback.
Long work (compare, score, trace, generate of more than GENERATE_BAR tokens) draws a progress bar on stderr when
stderr is a terminal (NPGPT_PROGRESS=1 or 0 forces it on or off; --quiet leaves it out).

    cli_args.py   the parser, the model and decoding flags (shared)
    cli_study.py  the study commands, one Experiment each
    cli.py        the parser of every command, generate, download, models, batch, serve, and main
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__, batch, cores, hub, load, plots
from .cli_args import (GENERATE_BAR, Parser, add_decoding_arguments, add_model_arguments, early_stopping,
                       generation_settings, load_model, milliseconds_to_1s, non_negative_int, port_number,
                       positive_int, progress_setting)
from .cli_study import EXPERIMENTS, add_experiment
from .errors import NpgptError
from .progress import Progress, wanted
from .scheduler import GATHER


def build_parser() -> Parser:
    parser = Parser(prog="npgpt", description="GPT-2 inference and text generation in plain NumPy.")
    parser.add_argument("--version", action="version", version=f"npgpt {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    gen = commands.add_parser("generate", help="continue a prompt, streaming the text as it is produced")
    gen.add_argument("prompt", nargs="+", help="the text to continue ('' starts from <|endoftext|>); "
                                                "several prompts are generated together as a batch")
    add_model_arguments(gen)
    gen.add_argument("--max-new-tokens", type=non_negative_int, default=50, help="at most this many (50)")
    gen.add_argument("--stop", action="append", default=[], help="stop before this text; repeatable")
    gen.add_argument("--num-return-sequences", "--n", dest="n", type=int, default=1,
                     help="sequences per prompt (sampling or beam search)")
    gen.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams")
    gen.add_argument("--length-penalty", type=float, default=1.0, help="beam score = logprob / length ** this")
    gen.add_argument("--early-stopping", type=early_stopping, default=False, help="beam search: true|false|never")
    gen.add_argument("--logprobs", type=non_negative_int, nargs="?", const=0, default=None, metavar="N",
                     help="print each token's log-probability and its N most likely alternatives")
    gen.add_argument("--truncate-prompt", action="store_true", help="keep the last tokens of a too long prompt")
    gen.add_argument("--sliding-window", action="store_true",
                     help="go on past the context, keeping its last tokens (each token then costs a whole window)")
    fast = gen.add_argument_group("speculative decoding (the same text, faster when drafts are accepted)")
    fast.add_argument("--prompt-lookup-num-tokens", type=int, metavar="K",
                      help="draft up to K tokens copied from where the text's last words occurred before")
    fast.add_argument("--assistant-model", metavar="NAME",
                      help="draft with a smaller GPT-2 sharing the tokenizer (e.g. distilgpt2 for gpt2-medium)")
    gen.add_argument("--no-echo", action="store_true", help="print only the continuation, not the prompt")
    add_decoding_arguments(gen)
    gen.set_defaults(run=run_generate)

    dl = commands.add_parser("download", help="download a model from the hub into the cache (prints its path)")
    add_model_arguments(dl, positional=True, default=None,
                        help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2 or org/name")
    dl.set_defaults(run=run_download)

    models = commands.add_parser("models", help="list the models in the Hugging Face cache, with their sizes")
    models.set_defaults(run=run_models)

    jobs = commands.add_parser("batch", help="complete and score a JSON Lines file of requests, on every core or "
                                             "a Ray cluster")
    batch.add_arguments(jobs)
    jobs.set_defaults(run=batch.run_command)

    srv = commands.add_parser(
        "serve", help="an OpenAI-compatible completions server (POST /v1/completions)",
        epilog="Where NumPy's OpenBLAS chose its AVX-512 kernels by itself, whose products of a few rows are slow, "
               "serve starts itself again with OPENBLAS_CORETYPE=Haswell (its AVX2 kernels); setting "
               "OPENBLAS_CORETYPE keeps the kernels it names.")
    add_model_arguments(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    srv.add_argument("--port", type=port_number, default=8000, help="port (8000; 0: any free port)")
    srv.add_argument("--api-key", default=os.environ.get("NPGPT_API_KEY"),
                     help="require 'Authorization: Bearer KEY' on /v1/ routes (default: $NPGPT_API_KEY, else none)")
    srv.add_argument("--served-model-name", metavar="NAME",
                     help="the name clients give as \"model\" (default: --model as given)")
    srv.add_argument("--max-rows", type=positive_int, default=16, help="rows decoded together at most (16)")
    srv.add_argument("--max-waiting", type=positive_int, default=64,
                     help="requests that may wait for a place before the server answers 429 (64)")
    srv.add_argument("--gather-ms", type=milliseconds_to_1s, default=round(1000 * GATHER),
                     help=f"when idle, wait this long after a request for another before starting, so that a burst "
                          f"of requests decodes together ({round(1000 * GATHER)}; 0: start at once)")
    srv.add_argument("--started-again-from", help=argparse.SUPPRESS)  # set by start_again_with only
    srv.set_defaults(run=run_serve)

    for experiment in EXPERIMENTS:
        add_experiment(commands, experiment)
    parser.commands = commands.choices  # name -> its parser, so that main() can say which command erred
    return parser


def run_download(args) -> int:
    path = hub.Hub.from_env(progress=False if args.quiet else None).snapshot(args.model, args.revision)
    print(path)
    return 0


def run_models(args) -> int:
    client = hub.Hub.from_env()
    cached = client.cached()
    if not cached:
        print(f"no models in {client.cache_dir}")
        return 0
    print(f"{'model':<40} {'size':>10}  revisions")
    for m in cached:
        names = {commit: [] for commit in m.snapshots}
        for ref, commit in m.refs.items():
            names.setdefault(commit, []).append(ref)
        revisions = ", ".join(f"{'/'.join(refs) + ' ' if refs else ''}{commit[:10]}" for commit, refs in names.items())
        print(f"{m.repo_id:<40} {m.size / 1e6:>7.1f} MB  {revisions}")
    print(f"in {client.cache_dir}")
    return 0


def run_serve(args) -> int:
    kernels = cores.kernels_for_batches()
    if kernels and args.own_process and os.name == "posix":
        start_again_with(kernels)
    from . import server  # here: the server and its scheduler are imported only by this command

    model = load_model(args)
    note = None if args.started_again_from is None else (
        f"OpenBLAS chose its {args.started_again_from} kernels, slow at a few rows a step: started again with "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')} and now runs its {cores.blas_kernels()} ones (16 "
        f"clients were served 1.27x faster on an Intel Xeon, long prompts 20% slower; setting OPENBLAS_CORETYPE at "
        f"all keeps OpenBLAS's choice)")
    server.serve(model, host=args.host, port=args.port, api_key=args.api_key or None, max_rows=args.max_rows,
                 max_waiting=args.max_waiting, gather=args.gather_ms / 1000,
                 model_name=args.served_model_name or args.model, note=note)
    return 0


def start_again_with(kernels: str) -> None:
    """Run this command again in this process (os.execve: the same process id) with OPENBLAS_CORETYPE=kernels:
    OpenBLAS reads it only when NumPy loads it, so nothing else can change its kernels (see cores). The command
    says which kernels OpenBLAS had chosen, for serve to note after its address (what a script reads first)."""
    chosen = cores.blas_kernels()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv + ["--started-again-from", chosen],
                  {**os.environ, "OPENBLAS_CORETYPE": kernels})
    except OSError as e:  # then serve as we are
        print(f"npgpt serve: could not start again with OPENBLAS_CORETYPE={kernels} ({e}); serving with OpenBLAS's "
              f"{chosen} kernels", file=sys.stderr, flush=True)


def run_generate(args) -> int:
    model = load_model(args)
    settings = generation_settings(args, model.tokenizer)
    if args.assistant_model:
        settings["assistant_model"] = load(args.assistant_model, revision=None,
                                           progress=False if args.quiet else None)
    out = sys.stdout
    if len(args.prompt) == 1 and args.n == 1 and args.num_beams == 1:
        stream_one(model, args.prompt[0], settings, echo=not args.no_echo, progress=progress_setting(args))
        return 0
    results = model.generate(list(args.prompt), **settings)
    for prompt, result in zip(args.prompt, results):
        for k, completion in enumerate(result if isinstance(result, list) else [result], 1):
            label = f"beam {k}, score {completion.score:.4f}" if args.num_beams > 1 else f"sequence {k}"
            out.write(f"--- {prompt!r}, {label}, {completion.finish_reason} ---\n")
            out.write(("" if args.no_echo else prompt) + completion + "\n")
            if completion.logprobs:
                print_logprobs(completion.logprobs)
    return 0


def stream_one(model, prompt: str, settings: dict, echo: bool, progress: bool | None = None) -> None:
    """Print the prompt and its continuation as it is made. Generating more than GENERATE_BAR tokens with
    stderr on a terminal: a progress bar (tokens, tokens/s) when the text goes elsewhere (a file, a pipe), and a
    line with the speed at the end when the text itself is on the terminal."""
    steps = model.stream_steps(prompt, **settings)  # checks the settings before anything is printed
    out = sys.stdout
    long = settings["max_new_tokens"] > GENERATE_BAR and wanted(progress)
    on_screen = out.isatty()
    if echo:
        out.write(prompt)
        out.flush()
    reason, logprobs = None, []
    with Progress("generate", settings["max_new_tokens"], long and not on_screen, unit="tokens",
                  transient=True) as bar:
        for step in steps:
            out.write(step.text)
            out.flush()
            bar.update(1)
            reason = step.finish_reason
            if step.logprob is not None and step.finish_reason != "eos":
                logprobs.append(step.logprob)
    out.write("\n")
    if long and on_screen:
        out.flush()
        print(f"npgpt: {bar.done:,} tokens, {bar.rate():,.1f} tokens/s", file=sys.stderr)
    if logprobs:
        print_logprobs(logprobs)
    out.flush()
    if reason == "context":
        print(f"npgpt: stopped: the text filled the model's context of {model.config.n_positions} tokens",
              file=sys.stderr)


def print_logprobs(logprobs) -> None:
    alternatives = any(lp.top_logprobs for lp in logprobs)  # --logprobs N with N > 0
    print(f"{'token':>16}  {'logprob':>8}" + ("  top alternatives" if alternatives else ""))
    for lp in logprobs:
        others = "  ".join(f"{a.token!r} {a.logprob:.3f}" for a in lp.top_logprobs)
        print(f"{lp.token!r:>16}  {lp.logprob:8.3f}" + (f"  {others}" if alternatives else ""))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    args.own_process = argv is None  # the command line of this process, which may start again (serve does)
    if unknown:  # argparse would blame `npgpt`; the command's own help is what lists its flags
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        if getattr(args, "plot", None):
            plots.check_path(args.plot)  # before any work: matplotlib, the directory, the format
        return args.run(args)
    except NpgptError as e:  # anything else is a bug in npgpt: its traceback is what to report
        print(f"npgpt: error: {str(e) or type(e).__name__}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `npgpt generate ... | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
