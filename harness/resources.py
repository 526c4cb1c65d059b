"""Where the config tree and the published numbers live: a checkout or an installed package.

A checkout keeps them at the top level (``configs/``, ``results/paper/``); a wheel carries
copies as package data under ``harness/_data/`` (see setup.py). A checkout always wins, so
``python -m harness.run`` from a checkout (or an editable install) reads the checkout's files.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from importlib import resources
from pathlib import Path
from typing import Mapping

PACKAGE_ROOT = Path(__file__).resolve().parent
DATA_PACKAGE_DIR = "_data"
# Keeps package data extracted for the life of the process when the package is zipped.
_EXTRACTED = contextlib.ExitStack()
atexit.register(_EXTRACTED.close)


class ResourceNotFoundError(FileNotFoundError):
    """A config tree or data folder that is in none of the places searched."""


def checkout_root() -> Path | None:
    """The repository root when ``harness`` is imported from a checkout, else None."""
    root = PACKAGE_ROOT.parent
    # An installed package sits in site-packages: no pyproject.toml and no configs/ beside it.
    if (root / "pyproject.toml").is_file() and (root / "configs").is_dir():
        return root
    return None


def package_data_dir(name: str) -> Path | None:
    """``harness/_data/<name>`` as a real directory, or None when the package lacks it."""
    node = resources.files("harness").joinpath(DATA_PACKAGE_DIR, name)
    if not node.is_dir():
        return None
    if isinstance(node, Path):
        return node
    # Zipped package: Hydra and glob need a real folder (directory as_file needs Python 3.12).
    return _EXTRACTED.enter_context(resources.as_file(node))


def locate(what: str, checkout_rel: str, data_name: str,
           env_var: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The folder for ``what``: ``$env_var``, the checkout's, or the package's; else a clear error."""
    env = os.environ if environ is None else environ
    looked: list[str] = []
    if env_var and env.get(env_var):
        # A user's own tree is the only place looked at when named: no silent fallback.
        path = Path(env[env_var]).expanduser()
        if path.is_dir():
            return path
        raise ResourceNotFoundError(f"{what} not found: {env_var}={env[env_var]} is not a directory")
    if env_var:
        looked.append(f"${env_var} (unset)")
    root = checkout_root()
    checkout_path = (root or PACKAGE_ROOT.parent) / checkout_rel
    if root is not None and checkout_path.is_dir():
        return checkout_path
    looked.append(f"{checkout_path} (checkout)")
    data = package_data_dir(data_name)
    if data is not None:
        return data
    looked.append(f"{PACKAGE_ROOT / DATA_PACKAGE_DIR / data_name} (package data)")
    raise ResourceNotFoundError(f"{what} not found; looked in: {', '.join(looked)}")


#: Environment variable naming a user's own config tree (used instead of the shipped one).
CONFIG_ENV = "HARNESS_CONFIG_DIR"


def config_tree() -> Path:
    """``$HARNESS_CONFIG_DIR``, the checkout's ``configs/`` or the installed package's copy."""
    return locate("config tree", "configs", "configs", env_var=CONFIG_ENV)
