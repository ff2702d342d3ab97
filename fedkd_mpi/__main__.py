"""``python -m fedkd_mpi`` entry point."""

from fedkd_mpi.cli import main

raise SystemExit(main())
