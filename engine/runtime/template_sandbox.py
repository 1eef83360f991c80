"""The Jinja sandbox chat templates run in: no Python internals, and no runaway sizes.

Templates come from model files, i.e. from strangers. Jinja's immutable sandbox keeps them away
from Python's internals (and here it fails at the first attempt instead of rendering it as empty).
It does not bound the work a template does, so this module adds guards that refuse, before any
memory is spent, the ways a template can build something huge in one step: `*`, `**`, `+` and `%`
on big operands, `str` methods and filters given huge widths, `range` beyond a budget per render,
`lipsum`, and output longer than any prompt. They are cheap checks on sizes, so common bombs fail
at once on every OS; what they cannot see (a tight loop, a deep recursion) is stopped by the
process that renders templates (`template_process`), which has a deadline and a memory limit.

Imports only jinja2 and the standard library: this module is all the render process loads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

MAX_TEXT = 8 * 2**20  # characters (or items) any one value may hold, and a prompt's length: 2M+ tokens
MAX_ITEMS = 2**20  # items in any one list a template builds
MAX_WIDTH = 100_000  # a width, count or padding a filter or str method may be given
MAX_INT_BITS = 2**16  # an integer a template computes (a prompt needs nothing near it)
MAX_RANGE_STEPS = 100_000  # all `range()` calls of one render together


class TemplateTooCostly(jinja2.exceptions.TemplateError):
    """A template tried to build something far bigger than any prompt; refused before it did."""


def _too_costly(what: str) -> NoReturn:
    raise TemplateTooCostly(what)


def cost(value: Any, budget: int = MAX_TEXT, depth: int = 0) -> int:
    """About how many characters `value` becomes as text; counting stops once past `budget`."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        if len(value) > MAX_ITEMS or depth > 100:
            return budget + 1
        total = len(value)
        for item in (value.items() if isinstance(value, dict) else value):
            total += cost(item, budget - total, depth + 1)
            if total > budget:
                break
        return total
    return 16  # numbers, Undefined, macros, a namespace: small as text


def _check_text(size: int, what: str) -> None:
    if size > MAX_TEXT:
        _too_costly(f"{what} would be about {size:,} characters long; a prompt needs at most {MAX_TEXT:,}")


def _check_width(value: Any, what: str) -> None:
    if isinstance(value, int) and abs(value) > MAX_WIDTH:
        _too_costly(f"{what} of {value:,} is over the limit of {MAX_WIDTH:,}")


def _check_multiply(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            _too_costly(f"multiplying integers of {left.bit_length():,} and {right.bit_length():,} bits")
        return
    sequence, times = (left, right) if isinstance(right, int) else (right, left)
    if isinstance(sequence, (str, list, tuple)) and isinstance(times, int) and times > 0:
        if not isinstance(sequence, str) and len(sequence) * times > MAX_ITEMS:
            _too_costly(f"a list of {len(sequence) * times:,} items")
        _check_text(cost(sequence) * times, "repeating a value")


def _check_power(base: Any, exponent: Any) -> None:
    if (isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1
            and base.bit_length() * exponent > MAX_INT_BITS):
        _too_costly(f"{base.bit_length()}-bit integer ** {exponent:,}")


# `%` conversions: flags, then a width and a precision (a number, or `*` taken from the arguments).
_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_NUMBERS = re.compile(r"\d+")


def _arguments(args: Any) -> list[Any]:
    if isinstance(args, tuple):
        return list(args)
    if isinstance(args, dict):
        return list(args.values())
    return [args]


def check_percent(template: str, args: Any) -> None:
    """`template % args` (the `%` operator and the `format` filter) stays small."""
    values = _arguments(args)
    for match in _PERCENT.finditer(template):
        for number in match.groups():
            if number == "*":
                for value in values:
                    _check_width(value, "a `*` width in a % format")
            elif number:
                _check_width(int(number), "a width in a % format")
    _check_text(len(template) + template.count("%") * max((cost(v) for v in values), default=0),
                "a % format's result")


def check_str_format(template: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """`template.format(...)` stays small: no huge widths, and no field repeating a big value too often."""
    values = [*args, *kwargs.values()]
    for number in _FORMAT_NUMBERS.findall(template):
        if len(number) > 6:
            _too_costly(f"a number of {len(number)} digits in a format string")
        _check_width(int(number), "a number in a format string")
    if ":{" in template:  # a width taken from the arguments
        for value in values:
            _check_width(value, "a width given to a format string")
    _check_text(len(template) + template.count("{") * max((cost(v) for v in values), default=0),
                "a format string's result")


def _replace_size(text: str, old: str, new: str, count: int = -1) -> int:
    found = len(text) + 1 if old == "" else text.count(old)
    if count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


def _check_str_method(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a `str` method call whose result would be huge; the arguments to call it with."""
    if name in ("center", "ljust", "rjust", "zfill"):
        for value in [*args, *kwargs.values()]:
            _check_width(value, f"str.{name} width")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            _check_text(len(text) + text.count("\t") * size, "expandtabs' result")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = args[2] if len(args) > 2 and isinstance(args[2], int) else -1
        _check_text(_replace_size(text, args[0], args[1], count), "replace's result")
    elif name == "join" and args:
        items = list(_bounded(args[0]))  # str.join makes a list of its argument anyway
        _check_text(len(text) * max(len(items) - 1, 0) + cost(items), "join's result")
        return (items, *args[1:])
    elif name in ("format", "format_map"):
        mapping = args[0] if name == "format_map" and args and isinstance(args[0], dict) else {}
        check_str_format(text, args if name == "format" else (), {**kwargs, **mapping})
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((cost(v) for v in args[0].values()), default=0)
        _check_text(len(text) * max(longest, 1), "translate's result")
    return args


def _bounded(items: Iterable[Any]) -> Iterator[Any]:
    for n, item in enumerate(items):
        if n >= MAX_ITEMS:
            _too_costly(f"a sequence of more than {MAX_ITEMS:,} items")
        yield item


# Filters whose numeric arguments are sizes (a width, a line count, an indent).
_SIZED_FILTERS = {"center", "indent", "wordwrap", "batch", "slice", "tojson"}


def _check_filter(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if name in _SIZED_FILTERS:
        for argument in [*args, *kwargs.values()]:
            _check_width(argument, f"the {name} filter's argument")
    if name == "indent" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 4)
        per_line = cost(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        _check_text(len(value) + (value.count("\n") + 1) * per_line, "indent's result")
    elif name == "wordwrap" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 79)
        wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring", "\n")
        if isinstance(width, int) and isinstance(wrap, str):
            _check_text(len(value) + (len(value) // max(width, 1) + 1) * len(wrap), "wordwrap's result")
    elif name == "format" and isinstance(value, str):
        check_percent(value, args or kwargs)
    elif name == "replace" and isinstance(value, str) and len(args) >= 2:
        count = args[2] if len(args) > 2 and isinstance(args[2], int) else -1
        _check_text(_replace_size(value, str(args[0]), str(args[1]), count), "replace's result")
    elif name == "join" and isinstance(value, (list, tuple)):
        separator = args[0] if args else kwargs.get("d", "")
        _check_text(cost(separator) * len(value) + cost(value), "join's result")
    elif name in ("string", "pprint"):
        _check_text(cost(value), f"the {name} filter's result")


def _guarded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, refusing arguments that would make its result huge, and a huge result."""
    passes = getattr(function, "jinja_pass_arg", None)  # filters given the context first
    first = 1 if passes is not None else 0

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if len(args) > first:
            _check_filter(name, args[first], args[first + 1:], kwargs)
        result = function(*args, **kwargs)
        if isinstance(result, str):
            _check_text(len(result), f"the {name} filter's result")
        elif isinstance(result, (list, tuple)) and len(result) > MAX_ITEMS:
            _too_costly(f"the {name} filter's result of {len(result):,} items")
        return result

    if passes is not None:
        guarded.jinja_pass_arg = passes  # type: ignore[attr-defined]
    return guarded


class _BoundedNamespace(Namespace):
    """`namespace(...)`, whose attributes stay a bounded size however often a loop sets them."""

    def __setitem__(self, name: str, value: Any) -> None:
        _check_text(cost(value), f"namespace attribute {name!r}")
        super().__setitem__(name, value)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, failing at the first unsafe attribute, with size checks on operators and calls."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise jinja2.exceptions.SecurityError(f"access to {attribute!r} of a {type(obj).__name__} is unsafe")

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "+" and type(left) is str and type(right) is str:  # what templates do most, on every turn
            if len(left) + len(right) > MAX_TEXT:
                _check_text(len(left) + len(right), "joining two strings")
            return left + right
        if operator == "*":
            _check_multiply(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            _check_text(cost(left) + cost(right), "joining two values")
        elif operator == "%" and isinstance(left, str):
            check_percent(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any,  # jinja2's own signature
             *args: Any, **kwargs: Any) -> Any:
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format in a function
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str):
            args = _check_str_method(owner, getattr(method, "__name__", ""), args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


class _GenerationTags(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (Hugging Face's marker for assistant text) renders its body."""

    tags = {"generation"}  # noqa: RUF012  # jinja2 declares it as a plain attribute

    def parse(self, parser: Any) -> Any:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> NoReturn:
    """`raise_exception(...)`, which Hugging Face chat templates call to refuse a conversation."""
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, indent: int | None = None, separators: tuple[str, str] | None = None,
            ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    if isinstance(indent, int) and indent > 16:  # every line of nested data repeats it
        _too_costly(f"a JSON indent of {indent:,}")
    return json.dumps(value, indent=indent, separators=separators, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    if len(fmt) > 1000:  # a date's format is a few characters; each directive can grow tenfold
        _too_costly(f"a date format of {len(fmt):,} characters")
    return datetime.now().strftime(fmt)


def _counted_range() -> Callable[..., range]:
    """`range` for one render: all its calls together may count at most MAX_RANGE_STEPS."""
    left = MAX_RANGE_STEPS

    def bounded_range(*args: int) -> range:
        nonlocal left
        steps = range(*args)
        left -= len(steps)
        if left < 0:
            _too_costly(f"range() asked for more than {MAX_RANGE_STEPS:,} steps in one render")
        return steps

    return bounded_range


def environment() -> jinja2.Environment:
    """The sandbox, rendering as llama.cpp's Python bindings do (`trim_blocks`, `lstrip_blocks`)."""
    sandbox = _Sandbox(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                       extensions=[_GenerationTags, "jinja2.ext.loopcontrols"])
    sandbox.filters["tojson"] = _tojson
    sandbox.filters = {name: _guarded_filter(name, f) for name, f in sandbox.filters.items()}
    del sandbox.globals["lipsum"]  # text by the megabyte on request; no chat template needs it
    sandbox.globals["namespace"] = _BoundedNamespace
    return sandbox


def compile_template(source: str) -> jinja2.Template:
    """`source` compiled in a fresh sandbox; raises what jinja2 raises for a broken template."""
    return environment().from_string(source)


def render(template: jinja2.Template, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool,
           bos_token: str = "", eos_token: str = "", tools: Sequence[dict[str, Any]] | None = None) -> str:
    """The text `template` makes of `messages`, built piece by piece and refused once longer than MAX_TEXT.

    `tools` (OpenAI's tool list) is the `tools` variable Hugging Face templates read; without any it
    stays undefined, as templates expect when a chat has no tools (some loop over it unguarded).
    """
    offered = {"tools": list(tools)} if tools else {}
    pieces = template.generate(
        messages=list(messages), add_generation_prompt=add_generation_prompt, bos_token=bos_token,
        eos_token=eos_token, raise_exception=_raise_exception, range=_counted_range(),
        strftime_now=_strftime_now, **offered)
    length, kept = 0, []
    for piece in pieces:
        length += len(piece)
        if length > MAX_TEXT:
            _too_costly(f"the prompt grew past {MAX_TEXT:,} characters")
        if piece:  # a loop printing nothing still yields, and a list of them grows
            kept.append(piece)
    return "".join(kept)
