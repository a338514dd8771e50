"""Package discovery only; metadata lives in pyproject.toml.

targets/ and schedules/ sit at the top of the repository (they are data and per-target code, not
compiler internals) but ship inside the package as hwcomp.targets and hwcomp.schedules.
"""
from setuptools import find_packages, setup

packages = find_packages(include=["hwcomp", "hwcomp.*"])
packages += ["hwcomp.targets"]
packages += ["hwcomp." + p for p in find_packages(include=["schedules", "schedules.*"])]
setup(packages=packages)
