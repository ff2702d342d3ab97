"""fedkd_mpi: communication-efficient federated learning by knowledge distillation, over MPI."""

import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "fedkd_mpi/__init__.py").read_text())[1]
requirements = [
    line.split("#")[0].strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]

setup(
    name="fedkd-mpi",
    version=version,
    description="FedKD (Wu et al. 2022) simulated over MPI with exact byte accounting and HDF5",
    packages=find_packages(include=["fedkd_mpi", "fedkd_mpi.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.1", *requirements],
    entry_points={"console_scripts": ["fedkd-mpi=fedkd_mpi.cli:main"]},
)
