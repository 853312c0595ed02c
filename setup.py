"""Only the package list, which pyproject.toml cannot say: every ``cpt_harness`` subpackage found (none kept by
hand), and ``cpt_harness.sweeps``, the repository's sweeps/ folder (mapped in pyproject.toml's package-dir)."""

from setuptools import find_namespace_packages, setup

setup(
    packages=find_namespace_packages(include=["cpt_harness*"], exclude=["cpt_harness.sweeps*"]) + ["cpt_harness.sweeps"]
)
