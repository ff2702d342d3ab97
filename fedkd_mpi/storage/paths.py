"""Checks of the paths a run will write, made before any rank trains (no MPI, no torch):
the output file, the checkpoint, TensorBoard and spill directories, and the free space for
the whole run file. Every failure is one :class:`~fedkd_mpi.config.ConfigError` line."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fedkd_mpi.config import Config, ConfigError, checkpoint_dir
from fedkd_mpi.storage.disk import CLOSE_RESERVE, estimate_file_bytes, free_bytes, human_bytes


def probe_dir(field: str, directory: Path) -> None:
    """Create and remove a real file in ``directory``: permissions, read-only mounts, root
    squash, quota."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".fedkd_mpi-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"config error: '{field}' directory {directory} is not writable "
                          f"({exc.strerror or exc})") from None


def check_output(output: str, overwrite: bool) -> None:
    """The output file: not a directory or a device, not existing unless ``overwrite``, in a
    writable directory."""
    out = Path(output)
    if out.is_dir():
        raise ConfigError(f"config error: 'output' ({output}) is a directory; give a file path")
    if out.exists() and not out.is_file():
        raise ConfigError(f"config error: 'output' ({output}) exists and is not a regular file "
                          "(a device, pipe or socket); give a file path")
    if out.exists() and not overwrite:
        raise ConfigError(
            f"config error: 'output' file {output} already exists; pass --overwrite to "
            "replace it or set output=<new path>"
        )
    parent = out.parent if str(out.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"config error: 'output' ({output}): {probe} is not a directory")
    probe_dir("output", probe)


def check_dir(field: str, path: Path, note: str = "") -> None:
    """A directory the run will create or write into: it (or its nearest existing parent)
    must be a writable directory."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == path else f"has a file, {probe}, in its path"
        raise ConfigError(f"config error: '{field}' ({path}){note} {where}; it must be a "
                          "directory")
    probe_dir(field, probe)


def check_written_paths(cfg: Config, overwrite: bool) -> None:
    """Rank 0 (and ``fedkd-mpi validate``): output, checkpoint and TensorBoard paths."""
    check_output(cfg.output, overwrite)
    check_dir("runtime.checkpoint_dir", checkpoint_dir(cfg),
              "" if cfg.runtime.checkpoint_dir else f" (default: {cfg.output}.ckpt)")
    if cfg.runtime.tensorboard:
        check_dir("runtime.tensorboard", Path(cfg.runtime.tensorboard))


def spill_dir_error(cfg: Config, hosted: int, host: str) -> str:
    """A client rank (the spill directory is node-local): '' when this rank can spill where
    ``runtime.spill_dir`` points (checked only when it will spill), else one line."""
    cap = cfg.runtime.resident_clients
    if cap is None or cap >= hosted:
        return ""
    path = Path(cfg.runtime.spill_dir or tempfile.gettempdir())
    try:
        check_dir("runtime.spill_dir", path,
                  "" if cfg.runtime.spill_dir else " (default: $TMPDIR)")
    except ConfigError as exc:
        return f"{exc} (on {host})"
    return ""


def output_space_error(cfg: Config, world_size: int, num_layers: int, rounds: int,
                       extra_fields: int) -> str:
    """Rank 0, once the models are built: '' when the output's file system holds the whole
    run file (an upper estimate; plus the existing file, which a new or resumed file replaces
    only once complete), else one line."""
    need = estimate_file_bytes(cfg.data.num_clients, world_size, num_layers, rounds,
                               extra_fields) + CLOSE_RESERVE
    out = Path(cfg.output)
    if out.is_file():
        need += out.stat().st_size
    free = free_bytes(cfg.output)
    if free is None or free >= need:
        return ""
    return (f"config error: 'output' {cfg.output}: no space left on device for the run file "
            f"({human_bytes(free)} free, about {human_bytes(need)} needed for {rounds} "
            "rounds); free some space or write the output to another file system")


def _space_error(field: str, path: Path, need: int, what: str, detail: str, default: str,
                 fix: str) -> str:
    free = free_bytes(path)
    if free is None or free >= need:
        return ""
    return (f"config error: '{field}' {path}{default}: not enough free space for {what}: "
            f"{human_bytes(free)} free, about {human_bytes(need)} needed ({detail}); free some "
            f"space or {fix}")


def checkpoint_space_error(cfg: Config, need: int, detail: str) -> str:
    """Before any model is built: '' when the checkpoint directory's file system holds one
    checkpoint of ``need`` bytes (``detail``: of what), else one line."""
    default = "" if cfg.runtime.checkpoint_dir else " (default: <output>.ckpt)"
    return _space_error("runtime.checkpoint_dir", checkpoint_dir(cfg), need, "one checkpoint",
                        detail, default,
                        "point runtime.checkpoint_dir at a larger file system (or set "
                        "runtime.checkpoint_every=0: checkpoints on SIGTERM/SIGUSR1 only)")


def spill_space_error(cfg: Config, need: int, detail: str) -> str:
    """Before any model is built: '' when ``runtime.spill_dir`` (default $TMPDIR) holds the
    spilled clients' ``need`` bytes (``detail``: of what), else one line."""
    path = Path(cfg.runtime.spill_dir or tempfile.gettempdir())
    default = "" if cfg.runtime.spill_dir else " (default: $TMPDIR)"
    return _space_error("runtime.spill_dir", path, need, "the spilled clients", detail,
                        default, "point runtime.spill_dir at a larger node-local file system "
                        "or raise runtime.resident_clients")
