"""Report plumbing: the machine, paths as reports name them, Markdown tables."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def run_and_report(
    prefix: str,
    run: Callable[[Path], Any],
    report: Callable[[Any, str], str],
    out: Path,
    raw: Path,
) -> int:
    """A benchmark's whole life: ``run`` in a temporary directory (its generated data is
    deleted with it), the Markdown ``report`` to ``out`` and stdout, the raw results to
    ``raw`` as JSON, with that directory written as ``<scratch>``: a report names no
    absolute path of the machine it ran on."""
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        results = run(Path(scratch))
    text = report(results, started)
    out.write_text(text + "\n")
    raw.write_text(json.dumps(results, indent=1, default=str).replace(scratch, "<scratch>") + "\n")
    sys.stdout.write(text + "\n")
    return 0
