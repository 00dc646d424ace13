from setuptools import find_packages, setup

setup(
    name="wgagent",
    version="0.1.0",
    description="Routes, policy rules and firewall that follow connected WireGuard peers",
    packages=find_packages(include=["wgagent", "wgagent.*"]),
    python_requires=">=3.9",
    license="MIT",
    install_requires=["pyroute2>=0.7.9", "structlog>=21.5", "pyyaml>=5.1"],
    entry_points={"console_scripts": ["wgagent = wgagent.cli:main"]},
)
