import os
import re

from setuptools import find_packages, setup

# the one place the version lives is wgagent/__init__.py (read, not imported: the
# package's dependencies may not be installed yet)
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "wgagent", "__init__.py")) as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)

setup(
    name="wgagent",
    version=VERSION,
    description="Routes, policy rules and firewall that follow connected WireGuard peers",
    packages=find_packages(include=["wgagent", "wgagent.*"]),
    python_requires=">=3.9",
    license="MIT",
    install_requires=["structlog>=21.5", "pyyaml>=5.1"],
    # pyroute2 only for the tests: its decoders cross-check ours (tests/test_genl_parse.py, test_rtnl_wire.py);
    # hypothesis for the fuzzing of the parsers (tests/test_fuzz.py)
    extras_require={"test": ["pytest", "pyroute2>=0.7.9", "hypothesis"]},
    entry_points={"console_scripts": ["wgagent = wgagent.cli:main"]},
)
