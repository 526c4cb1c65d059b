"""Build hook: the wheel carries configs/ and results/paper/ as package data in harness/_data/.

The repository keeps both at the top level (a fixed layout); an installed harness finds its
copies through importlib.resources (harness/resources.py). Metadata lives in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# Source folder -> folder inside the harness package, and the files that travel.
PACKAGE_DATA = {"configs": ("configs", "*.yaml"), "results/paper": ("paper", "*")}


class BuildPyWithData(build_py):
    """build_py that also copies the config tree and the published numbers into the package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's own folders
        for source, (name, pattern) in PACKAGE_DATA.items():
            src = HERE / source
            if not src.is_dir():
                raise SystemExit(f"setup.py: {src} is missing; the wheel needs it as package data")
            dst = Path(self.build_lib) / "harness" / "_data" / name
            shutil.rmtree(dst, ignore_errors=True)
            for path in sorted(src.rglob(pattern)):
                if path.is_file():
                    target = dst / path.relative_to(src)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)


setup(cmdclass={"build_py": BuildPyWithData})
