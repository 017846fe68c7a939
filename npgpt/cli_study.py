"""The study commands (`npgpt top-k`, `trace`, `attention`, ..., `lens`, `patch`): each runs a study function,
prints its view and, with --plot, draws its figure."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import hub, load, plots, study, views
from .config import PRESETS
from .errors import InputError, NpgptError
from .progress import Progress, wanted
from .cli_args import (MODEL_NAMES, add_decoding_arguments, add_model_arguments, decoding_settings, load_model,
                       non_negative_int, progress_setting)

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
    c.add_argument("--position", type=int, default=-1,
                   help="the position the table shows (-1: the last; --plot shows every position)")


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
