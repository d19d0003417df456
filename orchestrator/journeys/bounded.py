"""The one Jinja2 environment of journeys: immutable sandbox, strict names, bounded work.

Segments, branch conditions, links and message templates all run in ``SANDBOX`` (an
``ImmutableSandboxedEnvironment`` with ``StrictUndefined``): no internals, no mutation of
lists or dicts, a missing name is an error. On top of that nothing a template says can
make a worker build a huge string or spin for ever; each limit raises ``TemplateLimitError``
(a ``SecurityError``, so callers report it as they report any sandbox refusal, naming the
template):

- one render writes at most ``MAX_OUTPUT_CHARS`` characters (every ``{{ … }}`` is counted
  as it is written, inside macros and loops too, and so is the text around them);
- one render runs at most ``MAX_LOOP_ITERATIONS`` loop iterations, all loops together;
- no value may grow past ``MAX_OUTPUT_CHARS``, checked *before* it is built where one
  operation can multiply sizes: ``*`` and ``**``, ``%`` and ``format`` widths, the
  ``center``/``ljust``/``rjust``/``zfill``/``expandtabs``/``replace``/``join`` methods and
  the ``center``/``indent``/``format``/``batch``/``slice``/``replace``/``join`` filters;
  ``~`` and ``+`` are checked after (they at most add sizes).

Article bodies are HTML: ``html_overlay`` turns autoescape on for them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from jinja2 import StrictUndefined, filters, nodes, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Template, TemplateModule
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT_CHARS = 100_000  # far above any channel's limit (an article: under 20,000)
MAX_LOOP_ITERATIONS = 10_000
MAX_POWER_BITS = 4_096  # ``**`` results beyond this many bits are refused before computing
SIZED_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBER = re.compile(r"\d+")


class TemplateLimitError(SecurityError):
    """A template tried to write, build or loop more than a render may."""


class _Budget:
    """What one render has spent so far."""

    def __init__(self) -> None:
        self.chars = 0
        self.iterations = 0

    def write(self, size: int) -> None:
        self.chars += size
        if self.chars > MAX_OUTPUT_CHARS:
            raise TemplateLimitError(
                f"output over {MAX_OUTPUT_CHARS:,} characters: a template may write at most "
                "that much; shorten it or its loops"
            )

    def loop(self) -> None:
        self.iterations += 1
        if self.iterations > MAX_LOOP_ITERATIONS:
            raise TemplateLimitError(
                f"more than {MAX_LOOP_ITERATIONS:,} loop iterations: a template may loop at "
                "most that often in all"
            )

    def stream(self, chunks: Iterable[str]) -> Iterator[str]:
        for chunk in chunks:
            self.write(len(chunk))
            yield chunk


_BUDGET: ContextVar[_Budget | None] = ContextVar("recall_template_budget", default=None)


@contextmanager
def _render_budget() -> Iterator[_Budget]:
    """The budget of the render in progress; a nested render (an import) shares it."""
    current = _BUDGET.get()
    if current is not None:
        yield current
        return
    budget = _Budget()
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def _too_big(size: int, what: str) -> TemplateLimitError:
    return TemplateLimitError(
        f"{what} would be {size:,} characters; a template value may have at most "
        f"{MAX_OUTPUT_CHARS:,}"
    )


V = TypeVar("V")


def check_size(value: V, what: str = "a value") -> V:
    """``value`` if its length is within bounds."""
    if isinstance(value, str | list | tuple) and len(value) > MAX_OUTPUT_CHARS:
        raise _too_big(len(value), what)
    return value


def _check_width(width: Any, what: str) -> None:
    if isinstance(width, int) and width > MAX_OUTPUT_CHARS:
        raise _too_big(width, what)


def _check_percent(fmt: Any) -> None:
    """``%`` formatting: no width or precision beyond the bound, none taken from arguments."""
    if not isinstance(fmt, str):
        return
    for spec in _PERCENT_SPEC.finditer(fmt):
        for number in spec.groups():
            if number == "*":
                raise TemplateLimitError("a '*' width in % formatting is not allowed here")
            if number is not None:
                _check_width(int(number), "a % format width")


def _check_braces(fmt: str) -> None:
    """``str.format``: no width beyond the bound, none nested from arguments."""
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if spec and "{" in spec:
            raise TemplateLimitError("a nested width in str.format is not allowed here")
        for number in _NUMBER.findall(spec or ""):
            _check_width(int(number), "a format width")


def _check_repeat(left: Any, right: Any) -> None:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(times, int):
            _check_width(len(seq) * times, "a repetition")


def _check_power(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int) and right > 0:
        bits = max(abs(left).bit_length() - 1, 1) * right
        if abs(left) > 1 and bits > MAX_POWER_BITS:
            raise TemplateLimitError(
                f"{left} ** {right} has about {bits:,} bits; a template may compute at most "
                f"{MAX_POWER_BITS:,}"
            )


def _replace_size(text: Any, new: Any) -> int:
    if not isinstance(text, str) or not isinstance(new, str):
        return 0
    return len(text) + (len(text) + 1) * len(new)


def _join_size(sep: Any, items: Any) -> int:
    if not isinstance(sep, str) or not hasattr(items, "__len__"):
        return 0
    return len(sep) * len(items)


def _check_method(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Size-multiplying ``str`` methods, checked before they run."""
    owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
    if not isinstance(owner, str):
        return
    if name in SIZED_METHODS and args:
        _check_width(args[0], f"str.{name}()")
    elif name == "expandtabs":
        size = kwargs.get("tabsize", args[0] if args else 8)
        if isinstance(size, int):
            _check_width(size * owner.count("\t"), "str.expandtabs()")
    elif name == "replace" and len(args) >= 2:
        _check_width(_replace_size(owner, args[1]), "str.replace()")
    elif name == "join" and args:
        _check_width(_join_size(owner, args[0]), "str.join()")


@pass_eval_context
def _join(eval_ctx: EvalContext, value: Iterable[Any], d: str = "",
          attribute: str | int | None = None) -> str:
    items = list(value)
    _check_width(_join_size(d, items), "the join filter")
    joined: str = filters.do_join(eval_ctx, items, d, attribute)
    return check_size(joined, "the join filter")


@pass_eval_context
def _replace(eval_ctx: EvalContext, s: str, old: str, new: str, count: int | None = None) -> str:
    _check_width(_replace_size(str(s), str(new)), "the replace filter")
    return filters.do_replace(eval_ctx, s, old, new, count)


def _center(value: str, width: int = 80) -> str:
    _check_width(width, "the center filter")
    return filters.do_center(value, width)


def _indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    unit = len(width) if isinstance(width, str) else width
    _check_width(unit * (str(s).count("\n") + 1) + len(str(s)), "the indent filter")
    return filters.do_indent(s, width, first, blank)


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    _check_percent(value)
    return check_size(filters.do_format(value, *args, **kwargs), "the format filter")


def _batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Any:
    _check_width(linecount, "the batch filter's count")
    return filters.do_batch(value, linecount, fill_with)


def _slice(value: Any, slices: int, fill_with: Any = None) -> Any:
    _check_width(slices, "the slice filter's count")
    return filters.do_slice(value, slices, fill_with)


class _BoundedCode(CodeGenerator):
    """Compiles ``~`` so that its result is checked."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.check_size(")
        super().visit_Concat(node, frame)
        self.write(")")


class _BoundedTemplate(Template):
    """A template whose renders keep to one budget (imports and includes share it)."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        context = self.new_context(dict(*args, **kwargs))
        with _render_budget() as budget:
            try:
                return self.environment.concat(budget.stream(self.root_render_func(context)))
            except Exception:
                self.environment.handle_exception()

    def make_module(
        self,
        vars: dict[str, Any] | None = None,  # noqa: A002 - jinja2's own name
        shared: bool = False,
        locals: Mapping[str, Any] | None = None,  # noqa: A002 - jinja2's own name
    ) -> TemplateModule:
        context = self.new_context(vars, shared, locals)
        with _render_budget() as budget:
            try:
                body = list(budget.stream(self.root_render_func(context)))
            except Exception:
                self.environment.handle_exception()
        return TemplateModule(self, context, body)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """``ImmutableSandboxedEnvironment`` with the limits of the module docstring."""

    code_generator_class = _BoundedCode
    template_class = _BoundedTemplate
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%":
            _check_percent(left)
        return check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_method(__obj, args, kwargs)
        return check_size(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _check_braces(value.__self__)
        return wrapped

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Every ``for`` loop iterates through ``bounded_loop``, which counts iterations."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(
                nodes.EnvironmentAttribute("bounded_loop"), [loop.iter], [], None, None,
                lineno=loop.iter.lineno,
            )
        return tree

    @staticmethod
    def bounded_loop(iterable: Iterable[Any]) -> Iterator[Any]:
        budget = _BUDGET.get() or _Budget()
        for item in iterable:
            budget.loop()
            yield item

    @staticmethod
    def check_size(value: Any) -> Any:
        return check_size(value, "a joined value")


def _finalize(value: Any) -> Any:
    """Counts every ``{{ … }}`` as it is written (applied at compile time to constants)."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.write(len(value) if isinstance(value, str) else len(str(value)))
    return value


SANDBOX = BoundedSandbox(
    undefined=StrictUndefined,
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
    finalize=_finalize,
)
SANDBOX.filters.update(
    center=_center, indent=_indent, format=_format, batch=_batch, slice=_slice,
    replace=_replace, join=_join,
)
