"""What study returns shows itself: short reprs (shapes, never whole arrays), str() the terminal view, and in
Jupyter well-formed, escaped HTML (npgpt.display)."""

from html.parser import HTMLParser

import numpy as np
import pytest

from npgpt import display, study, views

VOID = {"br", "hr", "img", "meta", "input"}


class Balance(HTMLParser):
    """Fails on a closing tag that does not match the open one; `open` is what is left unclosed."""

    def __init__(self):
        super().__init__()
        self.open, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (self.open, tag)
        self.open.pop()


def well_formed(markup: str) -> list[str]:
    """The tags of `markup`, which must all be closed in order."""
    parser = Balance()
    parser.feed(markup)
    parser.close()
    assert parser.open == [], parser.open
    return parser.tags


# -------------------------------------------------------------------------------------------- the helpers


def test_a_table_escapes_its_text_and_keeps_its_markup():
    markup = display.table(["<b>name</b>", "value"], [["<script>", display.Html("<i>ok</i>")], [1, 2.5]],
                           caption="a & b", align="lr", note="1 < 2")
    assert isinstance(markup, display.Html)
    assert "&lt;script&gt;" in markup and "<script>" not in markup and "&lt;b&gt;name" in markup
    assert "<i>ok</i>" in markup and "a &amp; b" in markup and "1 &lt; 2" in markup
    assert markup.count("text-align:right") == 3  # the second column: its header and its two cells
    assert well_formed(markup).count("tr") == 3


def test_a_table_without_a_header():
    assert "<thead>" not in display.table(None, [["a", 1]])


def test_bars_shades_tokens_shapes_and_limits():
    assert 'width:60.0px' in display.bar(0.5, 120) and 'width:120.0px;height' in display.bar(7, 120)
    assert 'width:0.0px' in display.bar(float("nan"))
    assert "rgb(255,255,255)" in display.shaded("0.00", 0) and "color:white" in display.shaded("1.00", 1)
    assert display.token(" <a>\n") == "<code>&#x27; &lt;a&gt;\\n&#x27;</code>"
    assert display.shape(np.zeros((2, 3), np.float32)) == "float32[2, 3]"
    assert display.limit(range(3), 5) == ([0, 1, 2], None)
    assert display.limit(range(50_257), 100) == (list(range(100)), "showing 100 of 50,257")
    for markup in (display.bar(0.3), display.shaded("x", 0.3), display.token("t")):
        well_formed(markup)


# ------------------------------------------------------------------------------------------ study's results


def test_candidates_are_a_list_that_shows_itself(micro):
    cands = study.topk(micro, "Hi <b>", k=5, temperature=0.7)
    assert isinstance(cands, study.Candidates) and isinstance(cands, list) and len(cands) == 5
    assert cands == list(cands) and cands.prompt == "Hi <b>" and cands.settings == {"temperature": 0.7}
    assert repr(cands).startswith("Candidates(5 after 'Hi <b>': ") and "\n" not in repr(cands)
    assert str(cands) == views.topk(cands, "Hi <b>", {"temperature": 0.7})
    markup = cands._repr_html_()
    assert well_formed(markup).count("tr") == 6 and "Hi &lt;b&gt;" in markup and "temperature=0.7" in markup
    for c in cands:
        assert f"{c.probability:.4%}" in markup and f">{c.id}<" in markup


def test_a_long_candidate_list_shows_its_first_rows(micro):
    cands = study.topk(micro, "Hi", k=100_000)
    assert len(cands) == micro.config.vocab_size
    markup = cands._repr_html_()
    assert well_formed(markup).count("tr") == 1 + display.MAX_ROWS and "showing 100 of 50,257" in markup
    assert len(repr(cands)) < 200


def test_a_trace_is_a_list_that_shows_itself(micro):
    trace = study.trace(micro, "Hi", steps=3, temperature=1.0, seed=2)
    assert isinstance(trace, study.Trace) and len(trace) == 3 and trace.settings == {"temperature": 1.0, "seed": 2}
    assert repr(trace) == f"Trace(3 steps from 'Hi': {', '.join(repr(s.chosen.token) for s in trace)})"
    assert str(trace) == views.trace(trace, "Hi", {"temperature": 1.0, "seed": 2})
    markup = trace._repr_html_()
    assert well_formed(markup).count("tr") == 4 and "[1, 3, 50257]" in markup


def test_the_architecture_tree_shows_itself():
    tree = study.inspect("gpt2")
    assert str(tree) == views.inspect(tree)
    assert repr(tree) == ("Part('GPT2LMHeadModel', '12 layers, 12 heads, 768 wide, context 1024', "
                          "params=124,439,808, children=['wte', 'wpe', 'h', 'ln_f', 'lm_head'])")
    markup = tree._repr_html_()
    tags = well_formed(markup)
    assert tags.count("details") == 1 + 1 + 12 * 3  # the model, h, and each block's attn and mlp, and itself
    assert "124,439,808" in markup and "768 -&gt; 2304" in markup and "split into q | k | v" in markup
    assert "<details open>" in markup and markup.count("<details open>") == 1


def test_a_score_shows_the_surprisals_shape_not_its_values(micro):
    score = study.score(micro, "The quick brown fox jumps over the lazy dog and runs away.")
    text = repr(score)
    assert f"surprisal=float64[{score.tokens}]" in text and "array" not in text
    assert text.startswith(f"Score(perplexity={score.perplexity:.4f}, tokens={score.tokens}")
    assert str(score) == views.score(score)
    markup = score._repr_html_()
    assert well_formed(markup).count("tr") == 6 and f"{score.perplexity:.3f}" in markup


def test_attention_hidden_and_temperature_reprs_show_shapes(micro):
    att = study.attention(micro, "Hello there friend")
    assert repr(att) == "Attention(tokens=3 ['Hello', ' there', ' friend'], probs=float32[3, 3])"
    assert well_formed(att._repr_html_()).count("tr") == 4
    hid = study.hidden(micro, "Hello there")
    assert repr(hid) == f"Hidden(tokens=2 ['Hello', ' there'], ids=2 {hid.ids}, states=float32[3, 2, 8])"
    temp = study.temperature(micro, "Hi", (0.5, 2), top=6)
    assert repr(temp).endswith(", ...], table={0.5: float64[6], 2: float64[6]})")
    assert well_formed(temp._repr_html_()).count("tr") == 7
    tokens, probs = att  # still the tuples they were
    assert tokens == att.tokens and probs is att.probs


@pytest.mark.parametrize("make", [
    lambda m: study.topk(m, "Hi", k=3), lambda m: study.trace(m, "Hi", steps=2), lambda m: study.inspect(m),
    lambda m: study.score(m, "one two three four"), lambda m: study.attention(m, "Hi there"),
    lambda m: study.temperature(m, "Hi", top=3), lambda m: study.hidden(m, "Hi there"),
], ids=["topk", "trace", "inspect", "score", "attention", "temperature", "hidden"])
def test_no_repr_prints_an_array(micro, make):
    result = make(micro)
    assert "array(" not in repr(result) and "\n" not in repr(result) and len(repr(result)) < 300
    assert isinstance(result._repr_html_(), str)


def test_model_tree_html_counts_the_checkpoint(micro):
    markup = study.inspect(micro)._repr_html_()
    assert f"total {micro.n_params:,} parameters" in markup


def test_a_completion_shows_its_text_finish_reason_and_logprobs(micro):
    out = micro.generate("Hello <b>", max_new_tokens=3, logprobs=True, top_logprobs=2)
    assert repr(out).startswith("Completion(") and "finish_reason='length', tokens=3" in repr(out)
    page = out._repr_html_()
    assert "<b>length</b> after 3 tokens" in page and "<table" in page and "<b>" not in out.text
    assert page.count("<tr>") == 4  # a header and one row per token
    ids = micro.generate([1, 2], max_new_tokens=2)
    assert repr(ids).startswith("TokenCompletion([") and "tokens=2" in repr(ids)
    assert "<table" not in ids._repr_html_()


def test_print_model_is_its_module_tree_and_outputs_show_shapes(micro):
    tree = repr(micro)
    assert "(h): 2 x Block" in tree and "(c_attn): Conv1D(in=8, out=24)" in tree and "tied to wte" in tree
    assert f"params={micro.n_params:,}" in tree
    out = micro.forward([1, 2, 3], output_hidden_states=True)
    assert repr(out) == ("Output(logits=float32[1, 3, 50257], hidden_states=3 x float32[1, 3, 8], "
                         "attentions=None, last_hidden_state=float32[1, 3, 8])")
