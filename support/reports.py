"""Report plumbing: the machine, paths as reports name them, Markdown tables."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from support.servers import ROOT


def relative(path: Path) -> str:
    """``path`` as a report names it: relative to the repository, never this machine's."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else resolved.name


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def markdown_section(title: str, intro: str, header: list[str], rows: list[list[str]]) -> str:
    """A report section: heading, one paragraph, one table."""
    lines = [
        f"## {title}",
        "",
        intro,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def results_json(results: object, scratch: str) -> str:
    """Raw results as JSON, with the run's temporary directory written as ``<scratch>``: a
    report names no absolute path of the machine it ran on."""
    return json.dumps(results, indent=1, default=str).replace(scratch, "<scratch>") + "\n"
