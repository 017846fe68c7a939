"""Small HTML pieces for showing results in Jupyter (their `_repr_html_`), and short reprs of arrays.

Everything here returns a str of HTML (or of text, for `shape`); nothing imports IPython. Text is escaped with
html.escape unless it is wrapped in `Html`, which marks markup that is already safe:

    from npgpt import display
    display.table(["token", "probability", ""],
                  [[display.token(" the"), "12.30%", display.bar(0.123)],
                   [display.token(" a"), "5.00%", display.bar(0.05)]],
                  caption="next token after 'I saw'", align="llr")
    display.shape(np.zeros((2, 3), np.float32))            # 'float32[2, 3]'

    escape(value)                 any value as escaped HTML text
    Html(markup)                  a str of markup that table() and cell() put in as it is
    cell(value)                   a table cell's content: Html as it is, anything else escaped
    table(header, rows, caption=None, align=None, note=None)
                                  a compact table; align is one letter per column (l, r or c)
    bar(fraction, width=120, color=BLUE)
                                  a horizontal bar, `fraction` (0..1) of `width` pixels
    shaded(text, fraction)        text on a background from white (0) to dark blue (1): a heat map's cell
    token(text)                   a token shown unambiguously (its repr, in monospace)
    shape(array)                  'float32[3, 4]': dtype and shape, for reprs (never the values)
    limit(items, most)            (the first `most` items, a note saying how many were left out or None)
"""

from __future__ import annotations

import html

import numpy as np

BLUE = "#4c78a8"
MAX_ROWS = 100  # a table longer than this shows its first rows and says how many it left out


class Html(str):
    """Markup that is already safe: table() and cell() put it in as it is."""


def escape(value) -> str:
    return html.escape(str(value))


def cell(value) -> str:
    return value if isinstance(value, Html) else escape(value)


def table(header, rows, caption: str | None = None, align: str | None = None, note: str | None = None) -> Html:
    """An HTML table: a header row (a list of column names, or None for none), then the rows (lists of cells:
    Html as it is, anything else escaped). align: one letter per column, l(eft), r(ight) or c(entre); numbers
    read best right-aligned. note: a line of small text under the table (e.g. what was left out)."""
    def style(i: int) -> str:
        side = {"l": "left", "r": "right", "c": "center"}.get((align or "")[i:i + 1], "left")
        return f' style="text-align:{side}"'

    parts = ['<table class="npgpt" style="border-collapse:collapse">']
    if caption:
        parts.append(f'<caption style="text-align:left;font-weight:bold">{cell(caption)}</caption>')
    if header:
        parts.append("<thead><tr>" + "".join(f"<th{style(i)}>{cell(h)}</th>" for i, h in enumerate(header))
                     + "</tr></thead>")
    parts.append("<tbody>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td{style(i)}>{cell(v)}</td>" for i, v in enumerate(row)) + "</tr>")
    parts.append("</tbody></table>")
    if note:
        parts.append(f'<div style="font-size:smaller;color:gray">{cell(note)}</div>')
    return Html("".join(parts))


def bar(fraction: float, width: int = 120, color: str = BLUE) -> Html:
    """A horizontal bar `fraction` (0..1, clipped) of `width` pixels long."""
    fraction = max(0.0, min(1.0, float(fraction))) if np.isfinite(fraction) else 0.0
    return Html(f'<div style="width:{width}px;background:#eee"><div style="width:{fraction * width:.1f}px;'
                f'height:0.9em;background:{escape(color)}"></div></div>')


def shaded(text, fraction: float) -> Html:
    """`text` on a background from white (fraction 0) to dark blue (1), in white when the background is dark:
    a heat map's cell."""
    f = max(0.0, min(1.0, float(fraction))) if np.isfinite(fraction) else 0.0
    red, green, blue = (int(round(255 + (c - 255) * f)) for c in (0x1f, 0x4e, 0x9a))
    return Html(f'<div style="background:rgb({red},{green},{blue});color:{"white" if f > 0.5 else "black"};'
                f'padding:0 2px">{cell(text)}</div>')


def token(text: str) -> Html:
    """A token shown unambiguously: its repr (spaces and newlines visible), in monospace."""
    return Html(f"<code>{escape(repr(text))}</code>")


def shape(array) -> str:
    """dtype[shape] of an array, e.g. 'float32[3, 4]': what a repr shows instead of the values."""
    array = np.asarray(array)
    return f"{array.dtype}[{', '.join(map(str, array.shape))}]"


def limit(items, most: int = MAX_ROWS):
    """(the first `most` items, a note such as 'showing 100 of 50,257' when some were left out, else None)."""
    items = list(items)
    if len(items) <= most:
        return items, None
    return items[:most], f"showing {most:,} of {len(items):,}"
