"""A Griffe extension for the API reference: the docstrings are written for ``help()`` and
Sphinx-style roles (``:math:`x```, ``.. math::`` blocks, ``:func:`name```, ``Example:``); the site renders
Markdown with ``pymdownx.arithmatex``. This turns the math roles and blocks into ``$...$`` and
``$$...$$`` and the cross-reference roles into code, before mkdocstrings parses the docstring.
The source docstrings are not changed."""

from __future__ import annotations

import re

import griffe

_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_REF_ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|obj|exc):`~?([^`]+)`")
_MATH_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<inline>.*)$")


def _math_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_BLOCK.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = match.group("indent")
        body = [match.group("inline")] if match.group("inline").strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        out += [f"{indent}$$", *(f"{indent}{line}" for line in body if line), f"{indent}$$", ""]
    return "\n".join(out)


_SECTION = re.compile(r"^(?P<indent>[ \t]*)(?:Args|Arguments|Parameters|Other Parameters):[ \t]*$")
_GROUPED = re.compile(r"^(?P<indent>[ \t]+)(?P<names>\*{0,2}\w+(?:,[ \t]*\*{0,2}\w+)+):[ \t]+(?P<text>.*)$")


def _split_grouped_arguments(text: str) -> str:
    """``a, b: text`` in an Args section becomes one entry per name with the same text (and
    continuation lines), so each parameter gets its row in the reference."""
    lines = text.split("\n")
    out: list[str] = []
    section_indent = None
    i = 0
    while i < len(lines):
        line = lines[i]
        section = _SECTION.match(line)
        if section:
            section_indent = len(section.group("indent"))
        elif line.strip() and section_indent is not None and len(line) - len(line.lstrip()) <= section_indent:
            section_indent = None
        grouped = _GROUPED.match(line) if section_indent is not None else None
        if not grouped:
            out.append(line)
            i += 1
            continue
        indent = grouped.group("indent")
        rest = []
        i += 1
        while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > len(indent):
            rest.append(lines[i])
            i += 1
        for name in (n.strip() for n in grouped.group("names").split(",")):
            out += [f"{indent}{name}: {grouped.group('text')}", *rest]
    return "\n".join(out)


def to_markdown(text: str) -> str:
    """The docstring ``text`` with its Sphinx math and reference roles in Markdown, grouped
    arguments (``a, b: ...``) split into one entry per name, and ``Example:`` read as the
    examples section."""
    text = _split_grouped_arguments(_math_blocks(text))
    # Griffe reads a singular "Example:" as an admonition (its >>> lines as Markdown), the
    # plural as the examples section whose >>> lines become console code blocks.
    text = _EXAMPLE.sub(lambda m: f"{m.group('indent')}Examples:", text)
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1).strip()}$", text)
    return _REF_ROLE.sub(lambda m: f"`{m.group(1)}`", text)


class SphinxMathToMarkdown(griffe.Extension):
    """Rewrites each loaded object's docstring with :func:`to_markdown`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
