"""The `npgpt` command line. Bad input ends with one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from . import __version__, hub, load, plots, study, views
from .config import PRESETS, GPT2Config
from .errors import NpgptError


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage and the error on two lines; one is enough
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


non_negative_int.__name__ = "integer"


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


def add_model_argument(parser):
    parser.add_argument("--model", "-m", default="gpt2",
                        help="a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, org/name) or a "
                             "directory with config.json and model.safetensors (default: gpt2)")
    parser.add_argument("--revision", help="hub branch, tag or commit (default: main)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no download progress bar")


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


def build_parser() -> Parser:
    parser = Parser(prog="npgpt", description="GPT-2 inference and text generation in plain NumPy.")
    parser.add_argument("--version", action="version", version=f"npgpt {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    gen = commands.add_parser("generate", help="continue a prompt, streaming the text as it is produced")
    gen.add_argument("prompt", nargs="+", help="the text to continue ('' starts from <|endoftext|>); "
                                                "several prompts are generated together as a batch")
    add_model_argument(gen)
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
    gen.add_argument("--no-echo", action="store_true", help="print only the continuation, not the prompt")
    add_decoding_arguments(gen)
    gen.set_defaults(run=run_generate)

    dl = commands.add_parser("download", help="download a model from the hub into the cache (prints its path)")
    dl.add_argument("name", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2 or org/name")
    dl.add_argument("--revision", help="branch, tag or commit (default: main)")
    dl.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    dl.set_defaults(run=run_download)

    models = commands.add_parser("models", help="list the models in the Hugging Face cache, with their sizes")
    models.set_defaults(run=run_models)

    add_study_commands(commands)
    return parser


# ------------------------------------------------------------------------------------------- study commands


def add_plot_argument(parser):
    parser.add_argument("--plot", metavar="FILE.png", help="also write a figure (needs matplotlib: "
                                                          "pip install 'npgpt[plot]')")


def add_study_commands(commands):
    c = commands.add_parser("topk", help="the most likely next tokens, with their probabilities")
    c.add_argument("prompt")
    c.add_argument("-k", type=int, default=10, help="how many candidates (10)")
    add_model_argument(c)
    add_decoding_arguments(c)
    add_plot_argument(c)
    c.set_defaults(run=run_topk)

    c = commands.add_parser("trace", help="generate step by step: the text, the choice, its runners-up")
    c.add_argument("prompt")
    c.add_argument("-n", "--steps", type=non_negative_int, default=10, help="steps (10)")
    c.add_argument("--alternatives", type=non_negative_int, default=3, help="runners-up shown per step (3)")
    add_model_argument(c)
    add_decoding_arguments(c)
    add_plot_argument(c)
    c.set_defaults(run=run_trace)

    c = commands.add_parser("attention", help="one attention head's probabilities over the prompt's tokens")
    c.add_argument("prompt")
    c.add_argument("--layer", type=int, default=0, help="layer, from 0 (0)")
    c.add_argument("--head", type=int, default=0, help="head, from 0 (0)")
    c.add_argument("--values", action="store_true", help="print the numbers instead of shades")
    add_model_argument(c)
    add_plot_argument(c)
    c.set_defaults(run=run_attention)

    c = commands.add_parser("mask", help="the causal attention mask: 0 on and below the diagonal, -inf above")
    c.add_argument("n", type=int, help="sequence length")
    add_plot_argument(c)
    c.set_defaults(run=run_mask)

    c = commands.add_parser("inspect", help="the architecture as a tree with shapes and parameter counts")
    c.add_argument("model", nargs="?", default="gpt2", help="a hub name or a model directory (gpt2); a preset "
                                                          "that is not cached is shown from its configuration")
    c.add_argument("--revision", help="hub branch, tag or commit")
    c.add_argument("--quiet", "-q", action="store_true", help="no download progress bar")
    add_plot_argument(c)
    c.set_defaults(run=run_inspect)

    c = commands.add_parser("temperature", help="how temperature reshapes the top of the distribution")
    c.add_argument("prompt")
    c.add_argument("--t", type=float, nargs="+", default=[0.1, 0.7, 1.5], metavar="T", help="temperatures")
    c.add_argument("--top", type=int, default=20, help="tokens shown (20)")
    add_model_argument(c)
    add_plot_argument(c)
    c.set_defaults(run=run_temperature)

    c = commands.add_parser("compare", help="greedy, temperature, top-k and top-p continuations side by side")
    c.add_argument("prompt")
    c.add_argument("--max-new-tokens", type=non_negative_int, default=30, help="tokens per continuation (30)")
    c.add_argument("--seed", type=int, default=0, help="the seed every sampled row uses (0)")
    add_model_argument(c)
    add_plot_argument(c)
    c.set_defaults(run=run_compare)

    c = commands.add_parser("score", help="perplexity of a text file, with a sliding window")
    c.add_argument("file", help="a UTF-8 text file ('-' reads standard input)")
    c.add_argument("--window", type=int, help="tokens per window (the model's context)")
    c.add_argument("--stride", type=int, help="tokens between window starts (half a window)")
    add_model_argument(c)
    add_plot_argument(c)
    c.set_defaults(run=run_score)

    c = commands.add_parser("hidden", help="the hidden states of every layer")
    c.add_argument("prompt")
    c.add_argument("--out", metavar="FILE.npz", help="save them (hidden_states [L+1, T, C], ids, tokens)")
    add_model_argument(c)
    add_plot_argument(c)
    c.set_defaults(run=run_hidden)


def show(args, text: str, draw) -> int:
    """Print a study command's terminal view; with --plot, also draw its figure: draw(path)."""
    print(text)
    if args.plot:
        print(f"wrote {draw(args.plot)}", file=sys.stderr)
    return 0


def run_topk(args) -> int:
    model = load_model(args)
    settings = decoding_settings(args, model.tokenizer)
    settings.pop("seed", None)
    cands = study.top_k(model, args.prompt, k=args.k, **settings)
    rules = ", ".join(f"{k}={v}" for k, v in settings.items() if v)  # the rules given (zero ones are off)
    title = f"next token after {args.prompt!r}" + (f" ({rules})" if rules else "")
    return show(args, views.candidates(cands, title), lambda path: plots.candidates(cands, title, path))


def run_trace(args) -> int:
    model = load_model(args)
    settings = decoding_settings(args, model.tokenizer)
    steps = study.trace(model, args.prompt, steps=args.steps, alternatives=args.alternatives, **settings)
    return show(args, views.trace(steps, args.prompt), lambda path: plots.trace(steps, args.prompt, path))


def run_attention(args) -> int:
    model = load_model(args)
    tokens, probs = study.attention_map(model, args.prompt, args.layer, args.head)
    return show(args, views.attention(tokens, probs, args.layer, args.head, values=args.values),
                lambda path: plots.attention(tokens, probs, args.layer, args.head, path))


def run_mask(args) -> int:
    m = study.causal_mask(args.n)
    return show(args, views.mask(m), lambda path: plots.mask(m, path))


def run_inspect(args) -> int:
    subject = inspect_subject(args)
    part = study.architecture(subject)
    if isinstance(subject, GPT2Config):
        print(f"{args.model}: not cached, shown from its preset configuration (npgpt download {args.model} "
              "fetches the checkpoint)")
    return show(args, views.tree(part), lambda path: plots.architecture(part, path))


def inspect_subject(args):
    """A loaded model (its checkpoint's tensors are counted), or a preset's configuration when that preset
    is not in the cache (nothing is downloaded just to draw the tree)."""
    if args.model in PRESETS and not os.path.exists(args.model):
        try:
            path = hub.Hub.from_env(offline=True).snapshot(args.model, args.revision)
        except hub.HubError:
            return GPT2Config.preset(args.model)
        return load(path)
    return load(args.model, revision=args.revision, progress=False if args.quiet else None)


def run_temperature(args) -> int:
    model = load_model(args)
    base, table = study.temperature_table(model, args.prompt, args.t, top=args.top)
    return show(args, f"after {args.prompt!r}\n" + views.temperatures(base, table),
                lambda path: plots.temperatures(base, table, path))


def run_compare(args) -> int:
    model = load_model(args)
    rows = study.compare(model, args.prompt, max_new_tokens=args.max_new_tokens, seed=args.seed)
    return show(args, views.compare(rows, args.prompt), lambda path: plots.compare(rows, args.prompt, path))


def run_score(args) -> int:
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
    except FileNotFoundError:
        raise NpgptError(f"{args.file}: no such file") from None
    except UnicodeDecodeError:
        raise NpgptError(f"{args.file}: not UTF-8 text") from None
    model = load_model(args)
    score = study.perplexity(model, text, window=args.window, stride=args.stride)
    return show(args, views.score(score, args.file), lambda path: plots.score(score, path))


def run_hidden(args) -> int:
    model = load_model(args)
    tokens, ids, states = study.hidden_states(model, args.prompt)
    if args.out:
        np.savez(args.out, hidden_states=states, ids=np.array(ids), tokens=np.array(tokens))
        print(f"wrote {args.out if args.out.endswith('.npz') else args.out + '.npz'}", file=sys.stderr)
    return show(args, views.hidden(tokens, states), lambda path: plots.hidden(tokens, states, path))


def run_download(args) -> int:
    path = hub.Hub.from_env(progress=False if args.quiet else None).snapshot(args.name, args.revision)
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


def run_generate(args) -> int:
    model = load_model(args)
    settings = decoding_settings(args, model.tokenizer)
    settings.update(max_new_tokens=args.max_new_tokens, stop=args.stop, n=args.n, num_beams=args.num_beams,
                    length_penalty=args.length_penalty, early_stopping=args.early_stopping,
                    truncate_prompt=args.truncate_prompt)
    if args.logprobs is not None:
        settings.update(logprobs=True, top_logprobs=args.logprobs)
    out = sys.stdout
    if len(args.prompt) == 1 and args.n == 1 and args.num_beams == 1:
        stream_one(model, args.prompt[0], settings, echo=not args.no_echo)
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


def stream_one(model, prompt: str, settings: dict, echo: bool) -> None:
    steps = model.stream_steps(prompt, **settings)  # checks the settings before anything is printed
    out = sys.stdout
    if echo:
        out.write(prompt)
        out.flush()
    reason, logprobs = None, []
    for step in steps:
        out.write(step.text)
        out.flush()
        reason = step.finish_reason
        if step.logprob is not None and step.finish_reason != "eos":
            logprobs.append(step.logprob)
    out.write("\n")
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
            plots.require_matplotlib()  # before any work
        return args.run(args)
    except (NpgptError, OSError, ValueError, MemoryError) as e:
        if isinstance(e, BrokenPipeError):  # e.g. `npgpt generate ... | head -1`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0
        message = str(e) or type(e).__name__
        print(f"npgpt: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
