"""Sessions: ``nox -s reproduce`` (the pipeline), ``nox -s tests``, ``nox -s lint``.

All sessions share one environment, ``.venv`` in the repository (or ``$HARNESS_VENV``): the
multi-GB torch install happens once, and again only when pyproject.toml or constraints.txt
change. nox's own per-session virtualenvs are not used for that reason.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("HARNESS_VENV", ROOT / ".venv"))
STAMP = VENV / ".harness-install-stamp"
INSTALL_INPUTS = ("pyproject.toml", "constraints.txt")

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests"]


def _wanted_stamp() -> str:
    digest = hashlib.sha256()
    for name in INSTALL_INPUTS:
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _python(session: nox.Session) -> str:
    """The shared environment's interpreter, (re)installed when its inputs changed."""
    python = VENV / "bin" / "python"
    if not python.exists():
        session.log(f"creating the shared environment {VENV}")
        session.run(sys.executable, "-m", "venv", str(VENV), external=True)
    if not STAMP.exists() or STAMP.read_text() != _wanted_stamp():
        session.log("installing the harness and its pinned dependencies (once, a few minutes)")
        session.run(str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[dev]", external=True)
        STAMP.write_text(_wanted_stamp())
    return str(python)


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The test suite (offline, CPU; SLURM tests skip when sbatch is absent)."""
    python = _python(session)
    session.run(python, "-m", "pytest", *(session.posargs or ["-q"]), external=True)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff over the code."""
    python = _python(session)
    session.run(python, "-m", "ruff", "check", "harness", "cookie", "baselines", "tests",
                "bench", "noxfile.py", external=True)


REPRODUCE_GRIDS = ("table2", "table3", "ablations")
REPRODUCE_WORKERS = 2


@nox.session(python=False)
def reproduce(session: nox.Session) -> None:
    """Smoke-scale grids on the embedded dataset, then every table and figure in results/.

    ``nox -s reproduce -- table3`` runs only the named grids; extra ``key=value`` arguments
    go to every grid (``nox -s reproduce -- scale=paper cluster=slurm``).
    """
    python = _python(session)
    grids = [a for a in session.posargs if "=" not in a] or list(REPRODUCE_GRIDS)
    overrides = [a for a in session.posargs if "=" in a]
    if not any(a.startswith("cluster") for a in overrides):
        # Independent stages two at a time, each on its share of the cores: tiny models use
        # two processes of one thread better than one process of two threads.
        overrides.append(f"cluster.workers={REPRODUCE_WORKERS}")
    failed, seconds = [], {}
    for grid in grids:
        started = time.perf_counter()
        try:
            session.run(python, "-m", "harness.run", f"grid={grid}", *overrides, external=True)
        except nox.command.CommandFailed:
            failed.append(grid)  # the report still shows which stages failed, never filled in
        seconds[grid] = time.perf_counter() - started
    # The report reads the grids' manifests and run records: it needs none of the overrides.
    started = time.perf_counter()
    session.run(python, "-m", "harness.report", "--grids", *grids, external=True)
    seconds["report"] = time.perf_counter() - started
    # Where the minutes went: per grid, per task, the longest stages (from the run records).
    session.run(python, str(ROOT / "bench" / "profile_runs.py"), "--grids", *grids,
                external=True)
    session.log("wall time: " + ", ".join(f"{name} {int(s // 60)} min {s % 60:.0f} s"
                                          for name, s in seconds.items()))
    if failed:
        session.error(f"grids with failed stages: {', '.join(failed)}")


#: Modules whose numbers reach the tables; their tests are configured in pyproject.toml
#: ([tool.mutmut]). Mutant names are ``<module>.<function>__mutmut_<n>``.
MUTATED_MODULES = ("harness.eval.ranking", "harness.eval.retrieval", "harness.eval.efficiency",
                   "harness.analysis.tables", "harness.analysis.cost_tables",
                   "harness.analysis.cells", "harness.analysis.compare")


def mutation_summary(root: Path) -> dict[str, dict[str, int]]:
    """Per mutated module: counts of mutmut's verdicts (killed, survived, timeout, not checked)."""
    import json

    names = {1: "killed", 3: "killed", 0: "survived", None: "not checked", 33: "no tests",
             34: "skipped", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout",
             255: "timeout"}
    out: dict[str, dict[str, int]] = {}
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        module = str(meta.relative_to(root / "mutants"))[: -len(".py.meta")].replace("/", ".")
        counts: dict[str, int] = {}
        for code in json.loads(meta.read_text())["exit_code_by_key"].values():
            verdict = names.get(code, "suspicious")
            counts[verdict] = counts.get(verdict, 0) + 1
        out[module] = counts
    return out


@nox.session(python=False)
def mutants(session: nox.Session) -> None:
    """Mutation testing with mutmut, one worker, module by module (slow; not part of CI).

    ``nox -s mutants -- harness.eval.ranking`` runs one module. Results stay in ``mutants/``
    (``mutmut results`` lists survivors, ``mutmut show <name>`` shows one); the per-module
    counts are printed at the end.
    """
    python = _python(session)
    mutmut = str(Path(python).parent / "mutmut")
    env = {"PYTHONPATH": str(ROOT)}  # the tests import this checkout, not an installed copy
    for module in session.posargs or MUTATED_MODULES:
        session.run(mutmut, "run", "--max-children", "1", f"{module}.*", external=True, env=env)
    for module, counts in mutation_summary(ROOT).items():
        checked = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("survived", 0)
        score = f"{100 * (checked - counts.get('survived', 0)) / checked:.1f} %" if checked else "-"
        session.log(f"{module}: {counts} -> {score} of checked mutants killed")
