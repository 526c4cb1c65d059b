"""Render one table three ways: Markdown (reading), LaTeX booktabs (papers), CSV (machines).

A :class:`Table` holds display strings, already formatted, in sections (one per dataset and
protocol, say), plus a data frame with the raw numbers for CSV: the CSV never carries rounded
or decorated values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.atomic import atomic_write_text


@dataclass
class Section:
    """Rows under one heading; ``heading`` None means no heading line."""

    heading: str | None
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Table:
    """A titled table: display sections, legend notes, and the raw data for CSV."""

    stem: str
    title: str
    columns: list[str]
    sections: list[Section]
    notes: list[str]
    data: pd.DataFrame
    numeric: frozenset[int] = frozenset()  # column indexes set right-aligned


# Text symbols used in display cells, and their LaTeX spelling (text mode).
_LATEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "†": r"\textsuperscript{\dag}", "‡": r"\textsuperscript{\ddag}",
    "→": r"$\rightarrow$", "↔": r"$\leftrightarrow$", "Δ": r"$\Delta$", "×": r"$\times$",
    "≈": r"$\approx$", "±": r"$\pm$", "—": "---", "–": "--", "−": "-", "`": "",
}


def latex_escape(text: str) -> str:
    """Escape ``text`` for LaTeX text mode (``_ % & # $ { } \\ ~ ^`` and the table symbols)."""
    return "".join(_LATEX_CHARS.get(ch, ch) for ch in str(text))


def _md_cell(text: str) -> str:
    return str(text).replace("|", r"\|").replace("\n", " ")


def to_markdown(table: Table) -> str:
    """GitHub Markdown: a heading, one sub-table per section, then the notes."""
    lines = [f"## {table.title}", ""]
    align = ["---:" if i in table.numeric else "---" for i in range(len(table.columns))]
    for section in table.sections:
        if section.heading:
            lines += [f"### {section.heading}", ""]
        lines.append("| " + " | ".join(map(_md_cell, table.columns)) + " |")
        lines.append("|" + "|".join(align) + "|")
        lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in section.rows]
        lines.append("")
    lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment; every cell and note is escaped."""
    n = len(table.columns)
    spec = "".join("r" if i in table.numeric else "l" for i in range(n))
    out = [f"% {latex_escape(table.title)}", r"% needs \usepackage{booktabs,graphicx}",
           r"\begin{table}[t]", r"\centering", r"\small",
           rf"\caption{{{latex_escape(table.title)}}}",
           rf"\label{{tab:{re.sub(r'[^A-Za-z0-9-]', '-', table.stem)}}}",
           r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
           " & ".join(latex_escape(c) for c in table.columns) + r" \\"]
    for section in table.sections:
        out.append(r"\midrule")
        if section.heading:
            out.append(rf"\multicolumn{{{n}}}{{l}}{{\textit{{{latex_escape(section.heading)}}}}}"
                       r" \\")
        out += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in section.rows]
    out += [r"\bottomrule", r"\end{tabular}}"]
    if table.notes:
        notes = " ".join(latex_escape(note) for note in table.notes)
        out.append(rf"\par\smallskip{{\footnotesize {notes}\par}}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def write_table(table: Table, out_dir: Path) -> list[Path]:
    """Write ``<stem>.tex`` and ``<stem>.csv`` under ``out_dir``; returns the paths."""
    tex, csv = out_dir / f"{table.stem}.tex", out_dir / f"{table.stem}.csv"
    atomic_write_text(tex, to_latex(table))
    atomic_write_text(csv, table.data.to_csv(index=False))
    return [tex, csv]
