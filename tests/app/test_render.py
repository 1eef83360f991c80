"""Replies rendered for the chat view: Markdown and highlighted code, never the model's own markup."""

from __future__ import annotations

from app.render import LIGHT, render_markdown


def test_replies_render_markdown_and_code_without_running_markup() -> None:
    rendered = render_markdown("Use **this**:\n```python\nprint('<b>')\n```\n<script>alert(1)</script>", LIGHT)
    assert "<b>this</b>" in rendered.html and 'href="cleo:copy-code/0"' in rendered.html
    assert rendered.code_blocks == ["print('<b>')"]
    assert "<script>" not in rendered.html and "&lt;script&gt;" in rendered.html
    assert "color" in rendered.html  # pygments coloured the code
    table = render_markdown("Prices:\n\n| Fruit | Price |\n|---|--:|\n| Apple | **1** |\n| Pear | 2 |\n\nDone.", LIGHT)
    assert "<th>Fruit</th>" in table.html and "<td><b>1</b></td>" in table.html and "<p>Done.</p>" in table.html


def test_openers_without_closers_stay_text_and_the_rest_still_renders() -> None:
    text = "*a " * 3000 + "\n\n" + "[a " * 3000 + "\n\n*it* and **bold** and [x](https://e.org)"
    rendered = render_markdown(text, LIGHT)
    assert "<i>" not in rendered.html.split("<p>")[1] and "*a *a" in rendered.html
    assert "<i>it</i>" in rendered.html and "<b>bold</b>" in rendered.html and 'href="https://e.org"' in rendered.html
    listed = render_markdown("- one\ncontinued\nand more\n- two", LIGHT)
    assert listed.html == "<ul><li>one continued and more</li><li>two</li></ul>"
    assert "<table" not in render_markdown("a | b\n" + " " * 5000 + "x", LIGHT).html  # not a table rule
