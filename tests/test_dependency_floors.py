"""pyproject.toml's version floors against (1) the releases that introduced APIs lit-qsum calls and (2) what is installed.

What this proves and what it does not: CI installs the newest releases, so no test here runs the code on the floor
versions. The first test checks each floor is no lower than the release that introduced an API lit-qsum calls
(a table kept by hand, each row naming the API and where it is used); the second that the installed versions,
which the rest of the suite tests, satisfy every pin.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# package -> (first release with the API, the API and where lit-qsum calls it)
API_INTRODUCED = {
    "transformers": ("4.56.0", "from_pretrained(dtype=...) in lit_qsum/backends/hf.py (torch_dtype before 4.56)"),
    "lightning": ("2.5.5", "LightningCLI._parse_ckpt_path, overridden and called in lit_qsum/cli.py (Lightning #21116)"),
    "peft": ("0.7.0", "LoraConfig(use_rslora=...) and get_peft_model_state_dict(save_embedding_layers=...)"),
}


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    deps = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        deps += extra
    return {Requirement(d).name: Requirement(d) for d in deps}


def floor(requirement: Requirement) -> Version | None:
    lows = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    return max(lows) if lows else None


@pytest.mark.parametrize("package", sorted(API_INTRODUCED))
def test_pyproject_floor_is_not_below_the_release_that_introduced_an_api_lit_qsum_calls(package: str) -> None:
    introduced, api = API_INTRODUCED[package]
    low = floor(requirements()[package])
    assert low is not None and low >= Version(introduced), (
        f"pyproject.toml allows {package} {low}, but lit-qsum calls {api}, new in {introduced}")


def test_installed_versions_satisfy_the_pyproject_pins() -> None:
    unmet = []
    for name, requirement in requirements().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an extra that is not installed here (unsloth needs a GPU)
        if not requirement.specifier.contains(re.sub(r"\+.*$", "", installed), prereleases=True):
            unmet.append(f"{name} {installed} (pyproject: {requirement.specifier})")
    assert not unmet, "installed versions outside the pins: " + ", ".join(unmet)
