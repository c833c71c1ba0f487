"""MkDocs hooks for the site. ``<!-- divreg-options: COMMAND -->`` on a line of its own becomes the table of
that command's config keys (key, default, what it is), generated from the config dataclass the
command runs with, the same source as ``divreg COMMAND --help``, so the page cannot drift from
the code."""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"^<!-- divreg-options: ([\w-]+) -->$", re.MULTILINE)  # on a line of its own


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def options_table(command: str) -> str:
    """The Markdown table of ``command``'s config keys."""
    from divreg.cli import COMMANDS, config_keys

    if command not in COMMANDS:
        raise ValueError(f"divreg-options placeholder names {command!r}, not a command ({sorted(COMMANDS)})")
    schema, _ = COMMANDS[command].load()
    rows = [f"| `{key}` | `{_cell(default)}` | {_cell(comment)} |" for key, default, comment in config_keys(schema)]
    return "\n".join([f"Every key of `divreg {command}` (also `divreg {command} --help`), set in a YAML file or as "
                      "`key=value` on the command line:", "", "| key | default | what it is |", "|---|---|---|", *rows])


def on_page_markdown(markdown: str, **kwargs) -> str:
    return _PLACEHOLDER.sub(lambda match: options_table(match.group(1)), markdown)
