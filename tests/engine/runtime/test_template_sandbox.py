"""Ordinary chat templates render exactly as plain Jinja renders them: the guards refuse bombs, not prompts."""

from __future__ import annotations

import json
import time
from typing import Any

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import ChatTemplateInvalid
from engine.runtime.chat_template import ChatTemplate
from tests.helpers.bad_models import ENDLESS

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# The shapes of the templates models ship with, written for these tests: a system prompt gathered in
# a namespace and a date, strict alternation with raise_exception, and one that uses many of the
# guarded operators and filters in the small amounts real templates use them.
GATHERED = ("{{- bos_token }}{%- set ns = namespace(system='') %}{%- for m in messages %}"
            "{%- if m['role'] == 'system' %}{%- set ns.system = ns.system + m['content']|trim %}{%- endif %}"
            "{%- endfor %}"
            "<|header|>system\n\nToday: {{ strftime_now('%d %b %Y') }}\n\n{{ ns.system }}<|eot|>"
            "{%- for m in messages if m['role'] != 'system' %}<|header|>{{ m['role'] }}\n\n{{ m['content']|trim }}"
            "<|eot|>{%- endfor %}{%- if add_generation_prompt %}<|header|>assistant\n\n{%- endif %}")
ALTERNATING = ("{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
               "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
               "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
BUSY = ("{% set rule = '-' * 8 %}{% for m in messages %}{{ '%03d' % loop.index }} {{ '{:>9}'.format(m.role) }}"
        "{{ m.role.center(11, '*') }} {{ rule }}\n{{ m.content|indent(2, true) }}\n{{ m.content|wordwrap(40) }}\n"
        "{{ m.content.replace('\\n', ' ')|truncate(60) }}|{{ m.content|length * 2 }}|{{ 2 ** loop.index }}\n"
        "{% endfor %}{{ messages|map(attribute='role')|join(', ') }}\n{{ messages|tojson }}\n"
        "{% for pair in messages|batch(2) %}{{ pair|length }}{% endfor %}{% for i in range(messages|length) %}"
        "{{ i }}{% endfor %}{{ ('ab' + 'cd') * 3 }}{{ '%s and %s' % ('a', 'b') }}")
TEMPLATES = {"chatml": CHATML, "gathered": GATHERED, "alternating": ALTERNATING, "busy": BUSY}


def _plain_jinja(source: str, messages: list[dict[str, str]]) -> str:
    """What Jinja's own sandbox makes of it, with the same globals and no guards."""
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)

    def raise_exception(message: str) -> Any:
        raise jinja2.exceptions.TemplateError(message)

    return environment.from_string(source).render(
        messages=messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>",
        raise_exception=raise_exception, strftime_now=lambda fmt: time.strftime(fmt))


_text = st.text(st.characters(codec="utf-8"), max_size=200)


@st.composite
def chats(draw: st.DrawFn) -> list[dict[str, str]]:
    turns = draw(st.integers(1, 8))
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": draw(_text)} for i in range(turns)]
    return ([{"role": "system", "content": draw(_text)}] if draw(st.booleans()) else []) + messages


def _plain_or_refused(source: str, chat: list[dict[str, str]]) -> str | None:
    try:
        return _plain_jinja(source, chat)
    except jinja2.exceptions.TemplateError:
        return None  # the template refuses this chat (a system message, roles out of turn)


@pytest.mark.parametrize("name", list(TEMPLATES))
@settings(max_examples=60, deadline=None)
@given(chat=chats())
def test_ordinary_templates_render_as_plain_jinja_does(name: str, chat: list[dict[str, str]]) -> None:
    source = TEMPLATES[name]
    expected = _plain_or_refused(source, chat)
    if expected is None and chat[0]["role"] == "system" and len(chat) > 1:  # Cleo folds the system message in
        folded = {"role": chat[1]["role"], "content": f"{chat[0]['content']}\n\n{chat[1]['content']}"}
        expected = _plain_or_refused(source, [folded, *chat[2:]])
    template = ChatTemplate(source, bos_token="<s>", eos_token="</s>", origin="model.gguf")
    if expected is None:
        with pytest.raises(ChatTemplateInvalid, match=r"model\.gguf failed on this conversation"):
            template.render(chat, add_generation_prompt=True)
    else:
        assert template.render(chat, add_generation_prompt=True) == expected


def test_a_refused_system_message_is_folded_into_the_first_user_message() -> None:
    template = ChatTemplate(ALTERNATING, origin="model.gguf")
    text = template.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == "[INST] Be brief.\n\nHi [/INST]"


def test_a_template_stopped_for_its_cost_is_not_tried_a_second_time() -> None:
    started = time.monotonic()
    with pytest.raises(ChatTemplateInvalid, match="did not finish"):
        ChatTemplate(ENDLESS).render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    assert time.monotonic() - started < 2.0  # a second try, with the system message folded, would take as long again


def test_a_template_cleo_wrote_can_render_in_process_with_the_same_result_and_guards() -> None:
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    local = ChatTemplate(GATHERED, bos_token="<s>", isolated=False)
    assert local.render(chat, add_generation_prompt=True) == ChatTemplate(GATHERED, bos_token="<s>").render(
        chat, add_generation_prompt=True)
    with pytest.raises(ChatTemplateInvalid, match="far more than any prompt needs"):
        ChatTemplate("{{ 'x' * 3000000000 }}", origin="mine", isolated=False).render(chat)
    with pytest.raises(ChatTemplateInvalid, match="must not touch"):
        ChatTemplate("{{ ''.__class__.__mro__ }}", isolated=False).render(chat)
    with pytest.raises(ChatTemplateInvalid, match="not a valid template"):
        ChatTemplate("{% for %}", isolated=False)
