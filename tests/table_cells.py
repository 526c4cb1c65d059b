"""Read written tables back cell by cell: Markdown and LaTeX rows keyed by column header.

Tests compare a table's cells with the numbers in the run files by (row key, column header),
so a column printed under the wrong header fails instead of being found somewhere in the file.
"""

from __future__ import annotations

import re

Row = dict[str, str]


def _split_md(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
    return [c.strip().replace(r"\|", "|") for c in cells]


def markdown_rows(md: str, title: str) -> list[Row]:
    """Every body row of the Markdown table titled ``## {title}``, as {header: cell}."""
    blocks = md.split("\n## ")
    body = next((b for b in blocks if b.lstrip("# ").startswith(title + "\n")), None)
    assert body is not None, f"no table titled {title!r}"
    rows: list[Row] = []
    lines = body.splitlines()
    for i, line in enumerate(lines):
        # A header is the line above a separator line (|---|---:|...).
        if i + 1 < len(lines) and re.fullmatch(r"\|(-{3,}:?\|)+", lines[i + 1].strip()):
            header = _split_md(line)
            for row_line in lines[i + 2:]:
                if not row_line.startswith("|"):
                    break
                cells = _split_md(row_line)
                assert len(cells) == len(header), row_line
                rows.append(dict(zip(header, cells)))
    return rows


def latex_rows(tex: str) -> list[Row]:
    """Every body row of a booktabs table (section headings skipped), as {header: cell}."""
    body = tex.split("\\toprule\n", 1)[1].split("\\bottomrule", 1)[0]
    lines = [line for line in body.splitlines()
             if line.endswith(r" \\") and not line.startswith(r"\multicolumn")]

    def cells(line: str) -> list[str]:
        return [c.strip() for c in re.split(r"(?<!\\)&", line[: -len(r" \\")])]

    header = cells(lines[0])
    out = []
    for line in lines[1:]:
        row = cells(line)
        assert len(row) == len(header), line
        out.append(dict(zip(header, row)))
    return out


def row_by(rows: list[Row], column: str, value: str) -> Row:
    """The one row whose ``column`` cell is ``value``."""
    found = [r for r in rows if r.get(column) == value]
    assert len(found) == 1, f"{len(found)} rows with {column} = {value!r}"
    return found[0]


def row_where(rows: list[Row], match: dict[str, str]) -> Row:
    """The one row whose cells equal every ``{header: value}`` of ``match``."""
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} rows matching {match}"
    return found[0]
