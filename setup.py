from setuptools import find_packages, setup

setup(
    name="wgagent",
    version="0.1.0",
    description="Routes, policy rules and firewall that follow connected WireGuard peers",
    packages=find_packages(include=["wgagent", "wgagent.*"]),
    python_requires=">=3.9",
    license="MIT",
    install_requires=["structlog>=21.5", "pyyaml>=5.1"],
    # pyroute2 only for the tests: its decoders cross-check ours (tests/test_genl_parse.py, test_rtnl_wire.py)
    extras_require={"test": ["pytest", "pyroute2>=0.7.9"]},
    entry_points={"console_scripts": ["wgagent = wgagent.cli:main"]},
)
