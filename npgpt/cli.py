"""The `npgpt` command line. Bad input ends with one line on stderr and a non-zero exit, never a traceback.
Long work (compare, score, trace, generate of more than GENERATE_BAR tokens) draws a progress bar on stderr when
stderr is a terminal (NPGPT_PROGRESS=1 or 0 forces it on or off; --quiet leaves it out)."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import __version__, batch, hub, load, plots, study, views
from .config import PRESETS
from .errors import InputError, NpgptError
from .progress import Progress, wanted

GENERATE_BAR = 100  # generate draws a progress bar for more new tokens than this


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage and the error on two lines; one is enough
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def integer_from(low: int):
    """An argparse type: an integer >= low (argparse names it "integer" in its errors)."""
    def integer(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return integer


non_negative_int, positive_int = integer_from(0), integer_from(1)


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

    srv = commands.add_parser("serve", help="an OpenAI-compatible completions server (POST /v1/completions)")
    add_model_arguments(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    srv.add_argument("--port", type=non_negative_int, default=8000, help="port (8000; 0: any free port)")
    srv.add_argument("--api-key", default=os.environ.get("NPGPT_API_KEY"),
                     help="require 'Authorization: Bearer KEY' on /v1/ routes (default: $NPGPT_API_KEY, else none)")
    srv.add_argument("--served-model-name", metavar="NAME",
                     help="the name clients give as \"model\" (default: --model as given)")
    srv.add_argument("--max-rows", type=positive_int, default=16, help="rows decoded together at most (16)")
    srv.add_argument("--max-waiting", type=positive_int, default=64,
                     help="requests that may wait for a place before the server answers 429 (64)")
    srv.set_defaults(run=run_serve)

    for experiment in EXPERIMENTS:
        add_experiment(commands, experiment)
    return parser


# ------------------------------------------------------------------------------------------- study commands


@dataclass(frozen=True)
class Experiment:
    """A study command: `npgpt NAME` runs study.NAME, prints views.NAME of the result and, with --plot, draws
    plots.NAME of it. The view and the figure are given the result, then what `about` gives."""

    name: str
    help: str
    study: Callable  # study.NAME(model, **inputs, **decoding settings) -> result
    view: Callable  # views.NAME(result, **about) -> text
    figure: Callable  # plots.NAME(result, **about) -> a matplotlib Figure
    add_arguments: Callable  # (parser): the command's own arguments
    inputs: Callable  # (args) -> the study function's keyword arguments from the command line
    about: Callable = lambda args: {}  # (args) -> what the view and the figure show besides the result
    model: Callable = load_model  # (args) -> the study function's first argument: by default the --model
    decoding: bool = False  # takes the decoding flags: they go to the study function, the view shows them
    save: Callable | None = None  # (result, args): a file the command writes besides the figure
    progress: bool = False  # long work: the study function takes progress= (a bar on stderr on a terminal)
    stream: Callable | None = None  # (model, inputs, about) -> result, printing the view as the work goes


def add_experiment(commands, e: Experiment) -> None:
    c = commands.add_parser(e.name, help=e.help)
    e.add_arguments(c)
    if e.model is load_model:
        add_model_arguments(c)
    if e.decoding:
        add_decoding_arguments(c)
    c.add_argument("--plot", metavar="FILE.png", help="also draw a figure (.png, .svg or .pdf; needs matplotlib: "
                                                      "pip install 'npgpt[plot]')")
    c.set_defaults(run=functools.partial(run_experiment, e))


def run_experiment(e: Experiment, args) -> int:
    inputs, about = e.inputs(args), e.about(args)  # first: a file that cannot be read fails before loading
    model = e.model(args)
    if e.decoding:
        settings = decoding_settings(args, model.tokenizer)
        inputs.update(settings)
        about["settings"] = settings
    if e.progress:
        inputs["progress"] = progress_setting(args)
    if e.stream:
        result = e.stream(model, inputs, about)
    else:
        result = e.study(*([] if model is None else [model]), **inputs)
        if e.save:  # before the view: a file that cannot be written leaves only the error
            e.save(result, args)
        print(e.view(result, **about))
    if args.plot:
        print(f"wrote {plots.save(e.figure(result, **about), args.plot)}", file=sys.stderr)
    return 0


def stream_trace(model, inputs: dict, about: dict) -> study.Trace:
    """trace, each step printed as soon as it is made; on a terminal a progress bar under the steps."""
    enabled = wanted(inputs.pop("progress"))
    steps = study.trace_steps(model, **inputs)  # checks the arguments before anything is printed
    print(views.trace_header(**about), flush=True)
    result = study.Trace(prompt=inputs["prompt"], settings=about.get("settings"))
    with Progress("trace", inputs["steps"], enabled, unit="steps", transient=True) as bar:
        bar.update(0)
        for step in steps:
            bar.clear()
            print(views.trace_step(step), flush=True)
            result.append(step)
            bar.update(1)
    return result


def prompt_argument(parser):
    parser.add_argument("prompt", help="the text ('' is <|endoftext|>)")


def topk_arguments(c):
    prompt_argument(c)
    c.add_argument("-k", type=int, default=10, help=f"how many candidates (10; at most {views.MAX_ROWS} are shown)")


def trace_arguments(c):
    prompt_argument(c)
    c.add_argument("-n", "--steps", type=non_negative_int, default=10, help="steps (10)")
    c.add_argument("--alternatives", type=non_negative_int, default=3, help="runners-up shown per step (3)")


def attention_arguments(c):
    prompt_argument(c)
    c.add_argument("--layer", type=int, default=0, help="layer, from 0 (0)")
    c.add_argument("--head", type=int, default=0, help="head, from 0 (0)")
    c.add_argument("--values", action="store_true", help="show the numbers (in the terminal instead of shades)")


def mask_arguments(c):
    c.add_argument("n", type=int, help=f"sequence length (a view shows at most {views.MAX_COLUMNS})")


def inspect_arguments(c):
    add_model_arguments(c, positional=True, help=f"{MODEL_NAMES} (gpt2); a preset that is not cached is shown "
                                                 "from its configuration")


def temperature_arguments(c):
    prompt_argument(c)
    c.add_argument("--t", dest="temperatures", type=float, nargs="+", default=[0.1, 0.7, 1.5], metavar="T",
                   help="temperatures (0.1 0.7 1.5)")
    c.add_argument("--top", type=int, default=20, help="tokens shown (20)")


def compare_arguments(c):
    prompt_argument(c)
    c.add_argument("--max-new-tokens", type=non_negative_int, default=30, help="tokens per continuation (30)")
    c.add_argument("--seed", type=int, default=0, help="the seed every sampled row uses (0)")


def score_arguments(c):
    c.add_argument("file", help="a UTF-8 text file ('-' reads standard input)")
    c.add_argument("--window", type=int, help="tokens per window (the model's context)")
    c.add_argument("--stride", type=int, help="tokens between window starts (half a window)")


def hidden_arguments(c):
    prompt_argument(c)
    c.add_argument("--out", metavar="FILE.npz", help="save them (hidden_states [L+1, T, C], ids, tokens)")


def no_model(args):  # mask: the study function takes no model
    return None


def inspect_subject(args):
    """A loaded model (its checkpoint's tensors are counted), or a preset's name when that preset is not in
    the cache: its tree is drawn from its configuration, and nothing is downloaded just for that."""
    if args.model in PRESETS and not os.path.exists(args.model):
        try:
            path = hub.Hub.from_env(offline=True).snapshot(args.model, args.revision)
        except hub.HubError:
            print(f"{args.model}: not cached, shown from its preset configuration (npgpt download {args.model} "
                  "fetches the checkpoint)", file=sys.stderr)
            return args.model
        return load(path)
    return load_model(args)


def read_text(path: str) -> str:
    """A UTF-8 text file ('-': standard input), or an InputError that says why it cannot be read."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a text file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except OSError as e:  # e.g. no permission
        raise InputError(f"{path}: cannot read it: {e.strerror or e}") from None


def save_hidden(result, args) -> None:
    """hidden --out: the states, ids and tokens as plain arrays in an .npz file (no pickle to read them)."""
    if not args.out:
        return
    path = args.out if args.out.endswith(".npz") else args.out + ".npz"  # np.savez adds the suffix
    try:
        np.savez(path, hidden_states=result.states, ids=np.array(result.ids), tokens=np.array(result.tokens))
    except OSError as e:
        raise NpgptError(f"cannot write {path}: {e.strerror or e}") from None
    print(f"wrote {path}", file=sys.stderr)


EXPERIMENTS = [
    Experiment("topk", "the most likely next tokens, with their probabilities",
               study.topk, views.topk, plots.topk, topk_arguments,
               inputs=lambda a: dict(prompt=a.prompt, k=a.k), about=lambda a: dict(prompt=a.prompt), decoding=True),
    Experiment("trace", "generate step by step: the text, the choice, its runners-up",
               study.trace, views.trace, plots.trace, trace_arguments,
               inputs=lambda a: dict(prompt=a.prompt, steps=a.steps, alternatives=a.alternatives),
               about=lambda a: dict(prompt=a.prompt), decoding=True, progress=True, stream=stream_trace),
    Experiment("attention", "one attention head's probabilities over the prompt's tokens",
               study.attention, views.attention, plots.attention, attention_arguments,
               inputs=lambda a: dict(prompt=a.prompt, layer=a.layer, head=a.head),
               about=lambda a: dict(layer=a.layer, head=a.head, values=a.values)),
    Experiment("mask", "the causal attention mask: 0 on and below the diagonal, -inf above",
               study.mask, views.mask, plots.mask, mask_arguments,
               inputs=lambda a: dict(n=a.n), model=no_model),
    Experiment("inspect", "the architecture as a tree with shapes and parameter counts",
               study.inspect, views.inspect, plots.inspect, inspect_arguments,
               inputs=lambda a: {}, model=inspect_subject),
    Experiment("temperature", "how temperature reshapes the top of the distribution",
               study.temperature, views.temperature, plots.temperature, temperature_arguments,
               inputs=lambda a: dict(prompt=a.prompt, temperatures=a.temperatures, top=a.top),
               about=lambda a: dict(prompt=a.prompt)),
    Experiment("compare", "greedy, temperature, top-k and top-p continuations side by side",
               study.compare, views.compare, plots.compare, compare_arguments,
               inputs=lambda a: dict(prompt=a.prompt, max_new_tokens=a.max_new_tokens, seed=a.seed),
               about=lambda a: dict(prompt=a.prompt), progress=True),
    Experiment("score", "perplexity of a text file, with a sliding window",
               study.score, views.score, plots.score, score_arguments,
               inputs=lambda a: dict(text=read_text(a.file), window=a.window, stride=a.stride),
               about=lambda a: dict(source=a.file), progress=True),
    Experiment("hidden", "the hidden states of every layer",
               study.hidden, views.hidden, plots.hidden, hidden_arguments,
               inputs=lambda a: dict(prompt=a.prompt), save=save_hidden),
]


# ---------------------------------------------------- issue 14: looking inside (npgpt lens, npgpt patch) ---------


def token_argument(text: str):
    """A token as given on the command line: an id if it is digits, else its text."""
    return int(text) if text.isdigit() else text


def lens_arguments(c):
    prompt_argument(c)
    c.add_argument("--target", type=token_argument, help="a token (one token's text, e.g. ' Paris', or an id) whose "
                                                         "rank is followed through the layers")
    c.add_argument("-k", type=int, default=5, help="top tokens per layer (5)")
    c.add_argument("--position", type=int, default=-1, help="the position shown (-1: the last)")


def patch_arguments(c):
    c.add_argument("clean", help="the clean prompt")
    c.add_argument("corrupted", help="the corrupted prompt (as many tokens as the clean one)")
    c.add_argument("--metric", choices=("logit_diff", "logprob", "prob"), default="logit_diff",
                   help="logit(answer) - logit(wrong) at the last position, or the answer's log-probability or "
                        "probability (logit_diff)")
    c.add_argument("--answer", type=token_argument, help="the clean answer token (the clean run's top token)")
    c.add_argument("--wrong", type=token_argument, help="the corrupted answer token (the corrupted run's top token)")
    c.add_argument("--activation", choices=("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads"),
                   default="resid_pre", help="what is patched: per layer x position, or 'heads' (each head's output, "
                                             "every position) per layer x head (resid_pre)")


def run_patch(model, clean, corrupted, metric, answer, wrong, activation):
    if activation == "heads":
        return study.patch_heads(model, clean, corrupted, metric, answer=answer, wrong=wrong)
    return study.patch(model, clean, corrupted, metric, activation, answer=answer, wrong=wrong)


EXPERIMENTS += [
    Experiment("lens", "the logit lens: each layer's residual stream read as next-token predictions",
               study.logit_lens, views.logit_lens, lambda result, position=-1: plots.logit_lens(result),
               lens_arguments, inputs=lambda a: dict(prompt=a.prompt, target=a.target, k=a.k),
               about=lambda a: dict(position=a.position)),
    Experiment("patch", "activation patching between a clean and a corrupted prompt, by layer and position or head",
               run_patch, views.patch, plots.patch, patch_arguments,
               inputs=lambda a: dict(clean=a.clean, corrupted=a.corrupted, metric=a.metric, answer=a.answer,
                                     wrong=a.wrong, activation=a.activation)),
]

# ------------------------------------------------------------------------------------- end of issue 14's block


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
    from . import server  # here: the server and its scheduler are imported only by this command

    model = load_model(args)
    server.serve(model, host=args.host, port=args.port, api_key=args.api_key or None, max_rows=args.max_rows,
                 max_waiting=args.max_waiting, model_name=args.served_model_name or args.model)
    return 0


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
    print(f"{'token':>16}  {'logprob':>8}  top alternatives")
    for lp in logprobs:
        others = "  ".join(f"{a.token!r} {a.logprob:.3f}" for a in lp.top_logprobs)
        print(f"{lp.token!r:>16}  {lp.logprob:8.3f}  {others}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
