"""Result tables: the paper's tables rebuilt with the harness's rows beside the published ones.

Harness rows join published rows on protocol keys only, never on free text
(:func:`paper_protocol`): dataset, split, gallery size and regime (fine-tuned or zero-shot).
A harness ``coco`` row on the ``test`` split with 5000 images and a fine-tuned parent joins
``coco / karpathy_test / finetuned_5k``; ``flickr30k`` with 1000 images joins ``finetuned_1k``.
A dataset without published rows (the embedded synthetic one) has no counterpart. A stage
without a result shows its status, never numbers. Each grid gets ``<grid>.md`` (every table
of the grid) plus ``<grid>_<kind>.tex`` and ``.csv`` per table; kinds are ``retrieval``,
``cost``, ``ratio`` and ``unimodal`` (the last three in :mod:`harness.analysis.cost_tables`);
a kind with nothing to show is left out. Optional grid keys: ``tables: [retrieval, cost]``
picks the kinds; ``paper_table: table2`` says which published table the grid rebuilds: every
section of it (COCO 5K, Flickr30K 1K) is printed with its published rows whether or not the
grid ran that dataset, a dataset not run saying so with the command that runs it
(``paper_command``, default ``python -m harness.run grid=<name> scale=paper``);
``paper_rows: true|false`` lists every published row of a joined protocol (default: true
when ``paper_table`` is set) or only those of the harness's models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from harness.analysis.cells import (  # noqa: F401  (re-exported: the table vocabulary)
    COST_TASKS,
    DATASET_LABEL,
    LEGEND,
    METRICS,
    PAPER_GALLERY,
    PAPER_MODEL,
    PAPER_SPLIT,
    RECALL_KEYS,
    RETRIEVAL_TASKS,
    STATUS_MARK,
    PaperKey,
    PaperRow,
    distinguishing_overrides,
    gallery,
    has_numbers,
    interval_text,
    missing,
    num,
    paper_index,
    paper_protocol,
    row_intervals,
    seed_of,
    sig,
    status_text,
    text,
    without_seed,
)
from harness.analysis.collect import collect_plan
from harness.analysis.compare import (
    TABLE_METRICS,
    Reference,
    paired_seeds,
    paired_text,
    read_reference,
)
from harness.analysis.paper import load_paper_numbers
from harness.analysis.render import Section, Table, to_markdown, write_table
from harness.atomic import atomic_write_text
from harness.manifest import ManifestStage

SectionKey = tuple[str, tuple[str, str] | None]  # (dataset, (paper split, paper protocol))


def paper_sections(paper: pd.DataFrame, table: str | None) -> list[SectionKey]:
    """The (dataset, (split, protocol)) sections of a published table, in file order."""
    if not table:
        return []
    rows = paper[(paper["table"] == table) & paper["direction"].isin(("i2t", "t2i"))]
    return list(dict.fromkeys((str(r.dataset), (str(r.split), str(r.protocol)))
                              for r in rows.itertuples(index=False)))


def _section_keys(rows: pd.DataFrame, published: Sequence[SectionKey] = ()) -> list[SectionKey]:
    """Section of each row: a row with a result joins its protocol's section; one without
    joins its dataset's (a finished row's, else the published table's only one for it)."""
    done = {}
    for i, row in rows.iterrows():
        if has_numbers(row):
            done[i] = (str(row["dataset"]), paper_protocol(
                row["dataset"], row["split"], row.get("protocol.n_images"), row["regime"]))
    keys = []
    for i, row in rows.iterrows():
        dataset = str(row["dataset"])
        same = [k for k in done.values() if k[0] == dataset]
        printed = [k for k in published if k[0] == dataset]
        fallback = printed[0] if len(printed) == 1 else (dataset, None)
        keys.append(done.get(i) or (same[0] if same else fallback))
    return keys


def section_heading(dataset: str, joined: tuple[str, str] | None, split: Any,
                    has_results: bool = True, paper_datasets: frozenset[str] | None = None
                    ) -> str:
    """Heading naming a section's dataset and the published protocol it joins (or none).

    ``paper_datasets``: datasets with published rows; a dataset outside it (the embedded
    synthetic one) is said to be no paper dataset at all.
    """
    if joined is not None:
        size = joined[1].rsplit("_", 1)[1].upper()
        return (f"{DATASET_LABEL.get(dataset, dataset)} — Karpathy test, {size} images "
                f"(paper protocol {joined[1]})")
    if paper_datasets is not None and dataset not in paper_datasets:
        return (f"{dataset} — not a dataset of the paper (no published rows in "
                "results/paper/): no paper counterpart, paper columns empty")
    if not has_results:
        return (f"{dataset} — split {split}: no result yet, so no gallery to join on; "
                "published rows appear once a run reports its protocol")
    return (f"{dataset} — split {split}: not a published protocol: no paper counterpart, "
            "paper columns empty")


def protocol_cell(row: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    """The gallery, and for a re-ranking eval which first stage's top-k it re-scored."""
    cell = gallery(row)
    k = row.get("protocol.rerank_k")
    if missing(k):
        return cell
    first = row.get("protocol.first_stage")
    first = "its first stage" if missing(first) else (labels or {}).get(str(first), str(first))
    return f"{cell}; top-{int(k)} rerank of {first}"


def _harness_cells(unit: pd.DataFrame, variant: str | None,
                   labels: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Display cells of one table row (one stage, or the seeds of one experiment) and its
    csv fields: point values, bootstrap intervals, and mean ± std when seeds are several."""
    row = unit.iloc[0]
    cells, fields = _metric_cells(unit) if has_numbers(row) else ([""] * len(METRICS), {})
    status = status_text(row)
    if len(unit) > 1:
        seeds = ", ".join(str(seed_of(r)) for _, r in unit.iterrows())
        status = f"done; mean ± std over n={len(unit)} seeds ({seeds})"
    head = ["harness", str(row["model"]), *([variant or "—"] if variant is not None else [])]
    return [*head, text(row.get("scale")), text(row.get("regime")), protocol_cell(row, labels),
            *cells, status, " ".join(str(s) for s in unit["stage_id"])], fields


def _metric_cells(unit: pd.DataFrame) -> tuple[list[str], dict[str, Any]]:
    """Per metric, the cell text and csv fields of a done unit (see :func:`_harness_cells`)."""
    bounds = [getattr(row_intervals(r), "bounds", {}) for _, r in unit.iterrows()]
    cells, fields = [], {}
    for m in METRICS:
        values = [float(v) for v in unit[f"metric.{m}"] if not missing(v)]
        if not values:
            cells.append("")
            continue
        mean = sum(values) / len(values)
        fields[m] = mean
        cell = num(mean)
        if len(values) > 1:
            std = float(pd.Series(values).std(ddof=1))
            fields[f"{m}_std"], cell = std, f"{cell} ± {num(std)}"
        if bounds and all(m in b for b in bounds):
            # Several seeds: the mean of each seed's per-query interval (a typical width,
            # not an interval of the mean over seeds).
            low = sum(b[m][0] for b in bounds) / len(bounds)
            high = sum(b[m][1] for b in bounds) / len(bounds)
            fields[f"{m}_low"], fields[f"{m}_high"] = low, high
            cell = f"{cell} {interval_text(low, high)}"
        cells.append(cell)
    if len(unit) > 1:
        fields["n_seeds"] = len(unit)
        fields["seeds"] = " ".join(str(seed_of(r)) for _, r in unit.iterrows())
    return cells, fields


def seed_units(rows: pd.DataFrame, keys: Sequence[SectionKey], variants: Mapping[str, str]
               ) -> list[list[int]]:
    """Row positions shown as one table row: the done seeds of one experiment (same section,
    model, scale and variant) together, every other row alone; in first-seen order."""
    units: dict[Any, list[int]] = {}
    for i, (_, row) in enumerate(rows.iterrows()):
        seeded = has_numbers(row) and seed_of(row) is not None
        key = ((keys[i], str(row["model"]), str(row.get("scale")),
                variants.get(row["stage_id"], "")) if seeded else ("alone", i))
        units.setdefault(key, []).append(i)
    return list(units.values())


def _pairs(unit: pd.DataFrame, ref: pd.DataFrame
           ) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Seed-matched (row, reference) stage ids and run directories."""
    by_seed = {seed_of(r): (str(r["stage_id"]), str(r["run_dir"])) for _, r in ref.iterrows()}
    return [((str(r["stage_id"]), str(r["run_dir"])), by_seed[seed_of(r)])
            for _, r in unit.iterrows() if seed_of(r) in by_seed]


def _comparison_cells(rows: pd.DataFrame, units: Sequence[list[int]],
                      keys: Sequence[SectionKey], variants: Mapping[str, str],
                      reference: Reference) -> tuple[dict[int, str], dict[int, dict[str, Any]]]:
    """Per unit (by its first position), the paired-difference cell against its section's
    reference unit, and its csv fields."""
    ref_units = {}
    for unit in units:
        row = rows.iloc[unit[0]]
        if has_numbers(row) and reference.matches(str(row["model"]),
                                                  variants.get(row["stage_id"], "")):
            ref_units.setdefault(keys[unit[0]], unit)
    cells: dict[int, str] = {}
    fields: dict[int, dict[str, Any]] = {}
    for unit in units:
        first, ref = unit[0], ref_units.get(keys[unit[0]])
        if not has_numbers(rows.iloc[first]):
            continue
        if ref is None:
            cells[first] = f"no reference row ({reference.describe()}) in this section"
            continue
        if ref is unit:
            cells[first] = "reference"
            continue
        pairs = _pairs(rows.iloc[unit], rows.iloc[ref])
        if not pairs:
            cells[first] = "not compared: no seed in common with the reference"
            continue
        summary = paired_seeds(pairs)
        cells[first] = paired_text(summary)
        fields[first] = {"vs_reference": " ".join(p[1][0] for p in pairs)}
        for m in TABLE_METRICS:
            for part, value in (summary.get(m) or {}).items():
                fields[first][f"vs_ref_{m}_{part}"] = value
    return cells, fields


def not_run_command(grid: Mapping[str, Any]) -> str:
    """The command that would run a grid's stages on the paper's datasets."""
    return str(grid.get("paper_command") or f"python -m harness.run grid={grid['name']} "
                                             "scale=paper")


def _not_run_cells(dataset: str, grid: Mapping[str, Any], variant: bool) -> list[str]:
    return ["harness", "—", *(["—"] if variant else []), "—", "—", "—", *[""] * len(METRICS),
            f"not run: no run on {DATASET_LABEL.get(dataset, dataset)} yet; "
            f"`{not_run_command(grid)}` runs it (needs the real dataset)", ""]


def _paper_cells(prow: PaperRow, regime: str, protocol: str, variant: bool) -> list[str]:
    status = prow.status() + STATUS_MARK[prow.status()]
    return ["paper", prow.model, *(["—"] if variant else []), "published", regime, protocol,
            *[prow.cell(m) for m in METRICS], status, ""]


def _value_status(prow: PaperRow) -> str:
    """The row's status, or each number's where they differ (e.g. R@1 sourced, R@5 recalled)."""
    if len(set(prow.statuses.values())) <= 1:
        return prow.status()
    return "; ".join(f"{m}={s}" for m, s in prow.statuses.items())


def _delta(row: Mapping[str, Any], prow: PaperRow) -> dict[str, float]:
    out = {}
    for m in METRICS:
        mine = row.get(f"metric.{m}")
        if m in prow.values and not missing(mine):
            out[m] = float(mine) - prow.values[m]
    return out


def _record(source: str, model: str, key: tuple[str, tuple[str, str] | None],
            **fields: Any) -> dict[str, Any]:
    joined = key[1] or (None, None)
    return {"source": source, "model": model, "section_dataset": key[0],
            "paper_split": joined[0], "paper_protocol": joined[1], **fields}


def retrieval_table(df: pd.DataFrame, grid: Mapping[str, Any], paper: pd.DataFrame
                    ) -> Table | None:
    """Cross-modal retrieval of a grid's eval stages beside the published rows they join."""
    rows = df[df["task"].isin(RETRIEVAL_TASKS)].reset_index(drop=True)
    if rows.empty:
        return None
    name = str(grid["name"])
    index = paper_index(paper)
    # A grid that maps to a published table (`paper_table:` in its config) prints that
    # table's sections whether or not it ran them; others show only the harness's models.
    published = paper_sections(paper, grid.get("paper_table"))
    full = bool(grid.get("paper_rows", bool(published)))
    paper_datasets = frozenset(str(d) for d in paper["dataset"] if d)
    labels = {str(r["stage_id"]): str(r["label"]) for _, r in df.iterrows()
              if "label" in df.columns and not missing(r.get("label"))}
    # Seeds of one experiment are one row, so a seed is no variant.
    variants = {k: without_seed(v) for k, v in distinguishing_overrides(rows).items()}
    show_variant = any(variants.values())
    keys = _section_keys(rows, published)
    units = seed_units(rows, keys, variants)
    reference = read_reference(grid)
    compared, compared_fields = (_comparison_cells(rows, units, keys, variants, reference)
                                 if reference is not None else ({}, {}))
    # Harness rows grouped by scale within a section (first-seen order), Δ after its row.
    scales = list(dict.fromkeys(str(s) for s in rows["scale"]))
    order = sorted(units, key=lambda u: scales.index(str(rows["scale"].iloc[u[0]])))
    comparison_of: dict[int, str] = {}  # id of a displayed row -> its paired-difference cell
    sections: dict[SectionKey, Section] = {}
    data: list[dict[str, Any]] = []
    for key in dict.fromkeys([*published, *keys]):
        members = rows.loc[[k == key for k in keys]]
        done = any(has_numbers(r) for _, r in members.iterrows())
        split = members["split"].iloc[0] if len(members) else None
        section = sections[key] = Section(section_heading(key[0], key[1], split, done,
                                                          paper_datasets))
        if key[1] is None:
            continue
        wanted = {PAPER_MODEL.get(str(m)) for m in members["model"]}
        regime = key[1][1].split("_")[0]
        for (model, dataset, split_, protocol), prow in index.items():
            if (dataset, split_, protocol) == (key[0], *key[1]) and (full or model in wanted):
                section.rows.append(_paper_cells(prow, regime, protocol, show_variant))
                data.append(_record("paper", model, key, regime=regime, status=prow.status(),
                                    value_status=_value_status(prow),
                                    pretrain_pairs=prow.pretrain_pairs, **prow.values))
        if members.empty:
            section.rows.append(_not_run_cells(key[0], grid, show_variant))
            data.append(_record("harness", "", key, status=f"not run: {not_run_command(grid)}"))
    for unit in order:
        i = unit[0]
        key, row = keys[i], rows.iloc[i]
        variant = variants[row["stage_id"]] if show_variant else None
        cells, metrics = _harness_cells(rows.iloc[unit], variant, labels)
        sections[key].rows.append(cells)
        comparison_of[id(cells)] = compared.get(i, "")
        data.append(_record(
            "harness", str(row["model"]), key, variant=variant, scale=row.get("scale"),
            regime=row.get("regime"), split=row.get("split"),
            n_images=row.get("protocol.n_images"), n_texts=row.get("protocol.n_texts"),
            stage_id=cells[-1], status=cells[-2],
            chance_i2t_R1=row.get("chance.i2t_R@1"), chance_t2i_R1=row.get("chance.t2i_R@1"),
            **metrics, **compared_fields.get(i, {})))
        prow = index.get((PAPER_MODEL.get(str(row["model"]), ""), key[0], *(key[1] or ("", ""))))
        # A smoke-scale model is a pipeline check: a delta to a published number means nothing.
        # Several seeds: their mean has no one run to join a published row with.
        if prow is None or not has_numbers(row) or row.get("scale") == "smoke" or len(unit) > 1:
            continue
        delta = _delta(row, prow)
        sections[key].rows.append(
            ["Δ vs paper", prow.model, *(["—"] if show_variant else []), "", "", "",
             *[f"{delta[m]:+.2f}" if m in delta else "" for m in METRICS],
             f"harness − paper ({prow.model}, {prow.status()}{STATUS_MARK[prow.status()]})",
             ""])
        data.append(_record("delta", prow.model, key, stage_id=row["stage_id"],
                            status=f"harness - paper ({prow.status()})", **delta))
    columns = ["Source", "Model", *(["Variant"] if show_variant else []), "Scale", "Regime",
               "Protocol / gallery", *[m.replace("_", " ") for m in RECALL_KEYS], "RSUM",
               "Status", "Run"]
    first = columns.index("i2t R@1")
    notes = ["R@K in percent; i2t = image→text, t2i = text→image; RSUM = sum of the six.",
             LEGEND,
             "Δ = harness − paper, against the published row of the same model under the same "
             "protocol (dataset, split, gallery size, fine-tuned or zero-shot).",
             "Harness ↔ paper models: " + ", ".join(f"{k} ↔ {v}" for k, v in PAPER_MODEL.items())
             + "; other harness models have no published row of the same model.",
             "Scale smoke = tiny models for a pipeline check, never comparable to the paper "
             "(no Δ is computed for them).",
             "A row without numbers shows its stage status; nothing is filled in. Harness "
             "rows are grouped by scale.",
             *_chance_notes(rows)]
    if show_variant:
        notes.append("Variant = the overrides (of the stage or its training parents) that "
                     "differ from the other rows.")
    notes += _stat_notes(rows, units, reference)
    if reference is not None:
        # The paired-difference column sits before Status; rows without one get it empty.
        at = columns.index("Status")
        columns.insert(at, "Paired Δ vs reference")
        for section in sections.values():
            for cells in section.rows:
                cells.insert(at, comparison_of.get(id(cells), ""))
    return Table(stem=f"{name}_retrieval",
                 title=f"{name}: cross-modal retrieval — {grid.get('claim', '')}".rstrip(" —"),
                 columns=columns, sections=list(sections.values()), notes=notes,
                 data=_ordered(pd.DataFrame(data)), numeric=frozenset(range(first, first + 7)))


CSV_ORDER = ("source", "section_dataset", "paper_split", "paper_protocol", "model", "variant",
             "scale", "regime", "split", "n_images", "n_texts", *METRICS, "status",
             "value_status", "pretrain_pairs", "stage_id", "chance_i2t_R1", "chance_t2i_R1")


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in CSV_ORDER if c in frame.columns]
    return frame[[*first, *(c for c in frame.columns if c not in first)]]


def _stat_notes(rows: pd.DataFrame, units: Sequence[list[int]],
                reference: Reference | None) -> list[str]:
    """What the intervals, the seed aggregates and the paired marks mean, when shown."""
    notes = []
    found = [iv for _, r in rows.iterrows() if (iv := row_intervals(r)) is not None]
    for level, samples in dict.fromkeys((iv.level, iv.samples) for iv in found):
        notes.append(f"[low, high] after a harness number: its {level:.0%} percentile "
                     f"bootstrap interval ({samples} resamples of the test queries: images "
                     "for i2t, captions for t2i; RSUM from both), from the run record. It "
                     "covers the choice of queries only, not training (seeds, machines).")
    if any(len(u) > 1 for u in units):
        notes.append("mean ± std: over the training seeds of one experiment (sample std; n "
                     "in Status); its [low, high] is the mean of the seeds' per-query "
                     "intervals. Each seed's stage is a row of collected.csv.")
    if reference is not None:
        notes.append(f"Paired Δ vs reference = row − reference, where the reference is "
                     f"{reference.describe()} in the same section (same split and protocol; "
                     "grid key `reference`); paired bootstrap over the same resampled queries "
                     "for both runs, seed matched with seed, [low, high] its 95% interval. "
                     "* = the interval excludes 0 (with n seeds: every seed's does); "
                     "within noise = none of RSUM, i2t R@1, t2i R@1 excludes 0.")
    return notes


def _chance_notes(rows: pd.DataFrame) -> list[str]:
    out = []
    for _, row in rows.iterrows():
        if has_numbers(row) and not missing(row.get("chance.t2i_R@1")):
            out.append(f"Chance (random ranking) on {row['dataset']} {gallery(row)}: "
                       f"i2t R@1 = {num(row.get('chance.i2t_R@1'))}, "
                       f"t2i R@1 = {num(row.get('chance.t2i_R@1'))}.")
    return list(dict.fromkeys(out))


def grid_tables(df: pd.DataFrame, grid: Mapping[str, Any], paper: pd.DataFrame) -> list[Table]:
    """Every table of a grid from its collected rows (see module docstring for the kinds)."""
    from harness.analysis.cost_tables import cost_table, ratio_table, unimodal_table

    builders = {"retrieval": retrieval_table, "cost": cost_table, "ratio": ratio_table,
                "unimodal": unimodal_table}
    kinds = list(grid.get("tables") or builders)
    unknown = [k for k in kinds if k not in builders]
    if unknown:
        raise ValueError(f"grid {grid['name']!r}: unknown table kind(s) {unknown}; "
                         f"known: {list(builders)}")
    tables = [builders[kind](df, grid, paper) for kind in kinds]
    return [t for t in tables if t is not None]


def write_tables(df: pd.DataFrame, grid: Mapping[str, Any], results_dir: Path,
                 paper: pd.DataFrame | None = None) -> list[Path]:
    """Write ``tables/<grid>.md`` and each table's ``.tex``/``.csv``; returns the paths."""
    paper = load_paper_numbers() if paper is None else paper
    tables = grid_tables(df, grid, paper)
    if not tables:
        return []
    out = Path(results_dir) / "tables"
    md = out / f"{grid['name']}.md"
    atomic_write_text(md, "\n".join(to_markdown(t) for t in tables))
    return [md, *(p for t in tables for p in write_table(t, out))]


def write_grid_tables(grid: Mapping[str, Any], stages: Sequence[ManifestStage], run_root: Path,
                      results_dir: Path) -> list[Path]:
    """Collect a grid's stages (as its manifest lists them) and write its tables."""
    return write_tables(collect_plan(stages, str(grid["name"]), run_root), grid, results_dir)
