"""The harness installed as a package: a wheel built from the checkout, used outside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from harness.resources import ResourceNotFoundError, locate

REPO = Path(__file__).resolve().parents[1]


def _clean_env(**extra: str) -> dict[str, str]:
    # The test session may export PYTHONPATH=<checkout>; an installed package must not need it.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "HARNESS_CONFIG_DIR", "PYTHONSAFEPATH")}
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=_clean_env(**extra), capture_output=True, text=True,
                          timeout=600)


def _copy_checkout(dest: Path) -> Path:
    """The files a fresh clone has (tracked and untracked-not-ignored), without build leftovers."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


def test_env_config_dir_that_is_missing_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ResourceNotFoundError, match=f"HARNESS_CONFIG_DIR={missing} is not a dir"):
        locate("config tree", "configs", "configs", env_var="HARNESS_CONFIG_DIR",
               environ={"HARNESS_CONFIG_DIR": str(missing)})


def test_env_config_dir_wins_over_the_checkout(tmp_path: Path) -> None:
    got = locate("config tree", "configs", "configs", env_var="HARNESS_CONFIG_DIR",
                 environ={"HARNESS_CONFIG_DIR": str(tmp_path)})
    assert got == tmp_path


def test_checkout_uses_its_own_configs_and_numbers() -> None:
    from harness.analysis.paper import default_paper_dir
    from harness.config import find_config_dir

    if os.environ.get("HARNESS_CONFIG_DIR"):
        pytest.skip("HARNESS_CONFIG_DIR is set in this session")
    assert find_config_dir() == REPO / "configs"
    assert default_paper_dir() == REPO / "results" / "paper"


def test_checkout_snapshot_is_recognised_as_a_checkout(tmp_path: Path) -> None:
    from harness.launch.snapshot import snapshot_code

    snap = snapshot_code(tmp_path / "snap", root=REPO)
    code = ("import json, harness.config as c; from harness.launch.provenance import git_state; "
            "print(c.CONFIG_DIR); print(json.dumps(git_state()))")
    job = _run([sys.executable, "-c", code], cwd=tmp_path, PYTHONPATH=str(snap),
               PYTHONSAFEPATH="1")
    config_dir, git = job.stdout.splitlines()
    assert config_dir == str(snap / "configs"), job.stderr
    # The job reports the commit the snapshot was taken from, though it runs outside git.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert json.loads(git)["sha"] == head


def test_snapshot_of_an_unpacked_release_without_git_finds_its_configs(tmp_path: Path) -> None:
    from harness.launch.snapshot import CODE_DIRS, snapshot_code

    release = tmp_path / "release"  # a source tree without .git, e.g. an unpacked sdist
    for name in CODE_DIRS:
        shutil.copytree(REPO / name, release / name,
                        ignore=shutil.ignore_patterns("__pycache__", "_data"))
    shutil.copy2(REPO / "pyproject.toml", release / "pyproject.toml")
    snap = snapshot_code(tmp_path / "snap", root=release)
    job = _run([sys.executable, "-c", "import harness.config as c; print(c.CONFIG_DIR)"],
               cwd=tmp_path, PYTHONPATH=str(snap), PYTHONSAFEPATH="1")
    assert job.stdout.strip() == str(snap / "configs"), job.stderr


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_works_outside_the_checkout(tmp_path: Path) -> None:
    # Build as a new user would (pip wheel --no-deps .), offline: no build isolation.
    src = _copy_checkout(tmp_path / "src")
    wheels = tmp_path / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--no-index", "-q", "-w", str(wheels), "."], cwd=src)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("cookie_harness-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {"harness", "cookie", "baselines"} <= tops
    assert not {"configs", "results", "tests", "bench"} & tops
    for rel in ("configs/config.yaml", "configs/model/clip.yaml", "configs/grid/smoke.yaml",
                "paper/cookie.csv", "paper/peers.csv"):
        assert f"harness/_data/{rel}" in names, rel

    # A fresh venv that sees the test environment's packages (torch, hydra...) through a .pth
    # file, but not its editable install of this checkout (.pth files there are not processed).
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip())
    (site / "_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _run([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                      "--no-index", "-q", str(wheel)], cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    where = _run([str(py), "-c", "import harness; print(harness.__file__)"], cwd=cwd)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr

    shown = _run([str(py), "-m", "harness.run", "print_config=true", "model=clip"], cwd=cwd)
    assert shown.returncode == 0, shown.stderr
    assert "name: clip" in shown.stdout

    plan = _run([str(py), "-m", "harness.run", "grid=smoke", "dry_run=true"], cwd=cwd)
    assert plan.returncode == 0, plan.stderr
    assert "finetune-clip-synthetic-" in plan.stdout and "pending" in plan.stdout

    paper = _run([str(py), "-c", "from harness.analysis.paper import default_paper_dir as d, "
                  "load_paper_numbers as n; print(d()); print(len(n()))"], cwd=cwd)
    assert paper.returncode == 0, paper.stderr
    paper_dir, rows = paper.stdout.split()
    assert Path(paper_dir) == site / "harness" / "_data" / "paper" and int(rows) > 0

    env_json = _run([str(py), "-c", "import json; from harness.launch.provenance import "
                     "environment as e; print(json.dumps(e()))"], cwd=cwd)
    assert '"kind": "package"' in env_json.stdout and '"sha": null' in env_json.stdout

    # A SLURM job of an installed harness imports a snapshot of the installed packages, whose
    # package data holds the configs.
    snap = tmp_path / "snap"
    made = _run([str(py), "-c", "import sys; from pathlib import Path; from harness.launch."
                 "snapshot import snapshot_code as s; s(Path(sys.argv[1]))", str(snap)], cwd=cwd)
    assert made.returncode == 0, made.stderr
    assert (snap / "harness" / "_data" / "configs" / "config.yaml").is_file()
    assert (snap / "cookie" / "model.py").is_file() and (snap / "baselines" / "clip.py").is_file()
    job = _run([str(py), "-c", "import harness.config as c; print(c.__file__, c.CONFIG_DIR)"],
               cwd=cwd, PYTHONPATH=str(snap), PYTHONSAFEPATH="1")
    assert job.stdout.split() == [str(snap / "harness" / "config.py"),
                                  str(snap / "harness" / "_data" / "configs")], job.stderr

    # A user's own tree still wins when named.
    own = tmp_path / "my_configs"
    shutil.copytree(src / "configs", own)
    (own / "model" / "clip.yaml").write_text(
        (own / "model" / "clip.yaml").read_text().replace("init_temperature: 0.07",
                                                          "init_temperature: 0.0123"))
    mine = _run([str(py), "-m", "harness.run", "print_config=true", "model=clip"], cwd=cwd,
                HARNESS_CONFIG_DIR=str(own))
    assert mine.returncode == 0, mine.stderr
    assert "init_temperature: 0.0123" in mine.stdout

    # Without any config tree: one clear line naming every place looked at.
    shutil.rmtree(site / "harness" / "_data" / "configs")
    broken = _run([str(py), "-m", "harness.run", "print_config=true"], cwd=cwd)
    assert broken.returncode == 1
    assert broken.stderr.startswith("error: config tree not found; looked in:"), broken.stderr
    assert str(site / "harness" / "_data" / "configs") in broken.stderr
    assert "Traceback" not in broken.stderr
