"""Messages to the HTML subset QTextBrowser shows: Markdown prose, code highlighted by pygments.

Written for what chat models produce: paragraphs, headings, lists, quotes, bold, italics, inline
code, links and fenced code blocks. Everything the model wrote is escaped first, so a reply can
never inject markup. Links Cleo adds (copy, regenerate, ...) use the `cleo:` scheme; the view
handles them, and opens http(s) links in the browser.

A reply is rendered again on every repaint while it streams, and it is the model's (or an
import's) text: rendering stays linear in its length. Inline patterns never scan past the next
character that could close them, and a code block's language is guessed once, from its start
(`bench/markdown.py` measures both against plain text of the same length).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import lru_cache

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import TextLexer, get_lexer_by_name, guess_lexer
from pygments.util import ClassNotFound

_FENCE = re.compile(r"^```\s*([\w+#.-]*)\s*$")
# Each inner part stops at the next character that could end it ([^*] in italics, no "[" in a
# link's label), so an opener without a closer costs a scan to the next such character, not to
# the end of the line: "*a " * 20000 is linear.
_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|(?<![\w*])\*(?![\s*])([^*]+?)(?<!\s)\*(?![\w*])"
                     r"|\[([^\[\]]+)\]\((https?://[^\s)]+)\)|(https?://[^\s<]+[^\s<.,;:!?)])")
_LIST_ITEM = re.compile(r"^(\s*)([-*+]|\d+[.)])\s+(.*)$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_TABLE_CELL_RULE = re.compile(r":?-+:?")
GUESS_FROM = 4096  # characters of a code block its language is guessed from
GUESS_OPEN_AFTER = 400  # a block still being written is guessed once it is this long (or closed)
HIGHLIGHT_AT_MOST = 20_000  # longer code blocks are shown uncoloured: colouring is the costly part


@dataclass(frozen=True)
class Palette:
    code_style: str  # a pygments style
    code_background: str
    muted: str  # dates, footers
    user_background: str


LIGHT = Palette("friendly", "#f4f4f4", "#6b6b6b", "#eef3fb")
DARK = Palette("monokai", "#272822", "#a0a0a0", "#2a3242")


@dataclass
class Rendered:
    html: str
    code_blocks: list[str]  # their text, for "Copy" links numbered from `first_code`


def render_markdown(text: str, palette: Palette, *, first_code: int = 0,
                    lexers: dict[int, Lexer] | None = None) -> Rendered:
    """`text` (Markdown, as a model writes it) as HTML; a still-open code fence renders as code.
    `lexers` remembers the language guessed for each code block of this message (by its place in
    the message), so a reply re-rendered while it streams guesses each block's language once."""
    out: list[str] = []
    codes: list[str] = []
    paragraph: list[str] = []
    items: list[tuple[bool, list[str]]] = []  # (ordered, html parts) of the list being read
    guessed = {} if lexers is None else lexers
    lines = text.replace("\r\n", "\n").split("\n")

    def flush() -> None:
        if paragraph:
            out.append("<p>" + "<br>".join(_inline(line) for line in paragraph) + "</p>")
            paragraph.clear()
        if items:
            tag = "ol" if items[0][0] else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{' '.join(body)}</li>" for _, body in items) + f"</{tag}>")
            items.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line.strip())
        if fence:
            flush()
            code_lines = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                code_lines.append(lines[i])
                i += 1
            code = "\n".join(code_lines)
            lexer = _lexer(code, fence.group(1), guessed, len(codes), closed=i < len(lines))
            out.append(_code_block(code, fence.group(1), lexer, palette, first_code + len(codes)))
            codes.append(code)
        elif not line.strip():
            flush()
        elif "|" in line and i + 1 < len(lines) and _is_table_rule(lines[i + 1]):
            flush()
            rows = [line]
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(lines[i])
                i += 1
            out.append(_table(rows, palette))
            continue
        elif heading := _HEADING.match(line):
            flush()
            level = min(len(heading.group(1)) + 2, 6)  # headings inside a message stay modest
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif item := _LIST_ITEM.match(line):
            if paragraph:
                flush()
            items.append((item.group(2)[0].isdigit(), [_inline(item.group(3))]))
        elif line.startswith(">"):
            flush()
            out.append(f"<blockquote>{_inline(line.lstrip('> '))}</blockquote>")
        elif items:  # a continuation of the last list item
            items[-1][1].append(_inline(line.strip()))
        else:
            paragraph.append(line)
        i += 1
    flush()
    return Rendered("".join(out), codes)


def _inline(text: str) -> str:
    parts: list[str] = []
    last = 0
    for m in _INLINE.finditer(text):
        parts.append(html.escape(text[last:m.start()]))
        code, bold, italic, label, url, bare = m.groups()
        if code is not None:
            parts.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            parts.append(f"<b>{_inline(bold)}</b>")
        elif italic is not None:
            parts.append(f"<i>{_inline(italic)}</i>")
        elif label is not None:
            parts.append(f'<a href="{html.escape(url, quote=True)}">{html.escape(label)}</a>')
        else:
            parts.append(f'<a href="{html.escape(bare, quote=True)}">{html.escape(bare)}</a>')
        last = m.end()
    parts.append(html.escape(text[last:]))
    return "".join(parts)


def _table(rows: list[str], palette: Palette) -> str:
    """A pipe table: the first row is the header (the rule line under it is already skipped)."""
    cells = [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]
    head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
    return (f'<table cellpadding="4" cellspacing="0" border="1" style="border-color:{palette.muted}; '
            f'margin: 4px 0"><tr>{head}</tr>{body}</table>')


def _is_table_rule(line: str) -> bool:
    """The line under a table's header: cells of dashes, each with an optional colon at either end."""
    cells = line.strip().removeprefix("|").removesuffix("|").split("|")
    return all(_TABLE_CELL_RULE.fullmatch(cell.strip()) for cell in cells)


@lru_cache(maxsize=64)
def _named_lexer(language: str) -> Lexer:
    try:
        return get_lexer_by_name(language)
    except ClassNotFound:
        return TextLexer()


def _lexer(code: str, language: str, guessed: dict[int, Lexer], index: int, *, closed: bool) -> Lexer:
    """The lexer for code block `index`: by its language, or guessed once from its start. A block
    still being written is shown uncoloured until there is enough of it to guess from."""
    if language:
        return _named_lexer(language)
    if index in guessed:
        return guessed[index]
    if not closed and len(code) < GUESS_OPEN_AFTER:
        return TextLexer()
    try:
        lexer = guess_lexer(code[:GUESS_FROM]) if len(code) > 40 else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    guessed[index] = lexer
    return lexer


def _code_block(code: str, language: str, lexer: Lexer, palette: Palette, number: int) -> str:
    if len(code) > HIGHLIGHT_AT_MOST:
        body = html.escape(code, quote=False)
    else:
        formatter = HtmlFormatter(style=palette.code_style, noclasses=True, nowrap=True)
        body = highlight(code, lexer, formatter).rstrip("\n")
    label = html.escape(language or lexer.name.lower())
    return (f'<table width="100%" cellpadding="8" style="background-color:{palette.code_background}; margin: 4px 0">'
            f'<tr><td><span style="color:{palette.muted}">{label}</span> &nbsp; '
            f'<a href="cleo:copy-code/{number}">Copy</a></td></tr>'
            f'<tr><td><pre style="font-family: monospace; white-space: pre-wrap">{body}</pre></td></tr></table>')
