"""The checkpoint manifest: written with its own SHA-256, read back only when that checksum,
its schema and the run file's record of it all agree.

The run file records every manifest its writer commits (``run/checkpoint_round`` and
``run/checkpoint_sha256``: slot 0 the committed manifest, slot 1 one being written), so a
manifest that is intact but not this run file's (copied from another run, an older round
restored by hand, a checksum recomputed after an edit) is refused as well. Every refusal is
one :class:`~fedkd_mpi.config.ConfigError` line naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from fedkd_mpi.config import ConfigError

#: 3: the manifest carries its own SHA-256 and the run's id
FORMAT = 3
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FILE = re.compile(r"(server|rank_\d{4}|client_\d{7})\.pt")


def manifest_digest(man: dict[str, Any]) -> str:
    """SHA-256 of the manifest's content (every key but ``sha256``), in canonical JSON."""
    body = {k: v for k, v in man.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seal(man: dict[str, Any]) -> bytes:
    """The manifest's bytes, with its checksum."""
    return json.dumps({**man, "sha256": manifest_digest(man)}, indent=1).encode()


def _bad(where: Path, why: str) -> ConfigError:
    return ConfigError(f"resume error: the checkpoint manifest {where} {why}; the run file "
                       "and the checkpoint are left as they are (restore the manifest, or "
                       "start a new run)")


def _check_schema(man: dict[str, Any], where: Path) -> None:
    def need(key: str, kind: type | tuple[type, ...]) -> Any:
        value = man.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _bad(where, f"has no valid '{key}'")
        return value

    rnd = need("round", int)
    if rnd < 1 or need("dir", str) != f"round_{rnd:06d}":
        raise _bad(where, f"names directory {man.get('dir')!r} for round {rnd}")
    if need("world_size", int) < 2 or need("num_clients", int) < 1:
        raise _bad(where, "has an impossible world size or client count")
    need("run_id", str)
    need("config", dict)
    for name, entry in need("files", dict).items():
        if not (_FILE.fullmatch(name) and isinstance(entry, list) and len(entry) == 2
                and isinstance(entry[0], str) and _HEX64.fullmatch(entry[0])
                and isinstance(entry[1], int) and not isinstance(entry[1], bool)
                and entry[1] >= 0):
            raise _bad(where, f"has an invalid entry for file {name!r}")


def parse(raw: bytes, where: Path) -> dict[str, Any]:
    """The manifest in ``raw``, verified (checksum, format, schema); ConfigError otherwise."""
    try:
        man = json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        raise _bad(where, "is not valid JSON (damaged or edited)") from None
    if not isinstance(man, dict):
        raise _bad(where, "is not a JSON object")
    if man.get("format") != FORMAT and "sha256" not in man:
        raise _bad(where, f"is of format {man.get('format')!r}, without a checksum (written by "
                   f"an older fedkd_mpi, which alone can resume it; this version writes "
                   f"format {FORMAT})")
    digest = man.get("sha256")
    if not isinstance(digest, str):
        raise _bad(where, "has no checksum ('sha256')")
    if digest != manifest_digest(man):
        raise _bad(where, "does not match its own checksum (damaged or edited)")
    if man.get("format") != FORMAT:
        raise _bad(where, f"is of format {man.get('format')!r}, expected {FORMAT}")
    _check_schema(man, where)
    return man


def load(path: Path) -> dict[str, Any] | None:
    """The verified manifest at ``path``; None when there is none; ConfigError when it is
    there but not trustworthy."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _bad(path, f"cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _bad(path, f"is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    return parse(raw, path)


def cross_check(man: dict[str, Any], where: Path, record: dict[str, Any], output: str,
                world_size: int, num_clients: int) -> None:
    """The manifest against the run file's record of its checkpoints (``record``: run_id,
    rounds, sha256s from :func:`fedkd_mpi.storage.h5.checkpoint_record`) and this job:
    ConfigError (one line naming what differs) unless they agree."""
    def differ(what: str) -> ConfigError:
        return ConfigError(f"resume error: the checkpoint manifest {where} and the run file "
                           f"{output} disagree ({what}); both are left as they are (restore "
                           "the matching checkpoint, or start a new run)")

    if record.get("run_id") != man["run_id"]:
        raise differ(f"run id {man['run_id']} in the manifest, {record.get('run_id')} in the "
                     "run file: the checkpoint is of another run")
    slots = [(r, d) for r, d in zip(record.get("rounds", []), record.get("sha256", []),
                                    strict=False) if r >= 0]
    if not slots:
        raise differ("the run file records no checkpoint")
    if (man["round"], man["sha256"]) not in slots:
        held = " or ".join(f"round {r} ({d[:12]}…)" for r, d in slots)
        raise differ(f"round {man['round']} ({man['sha256'][:12]}…) in the manifest, the run "
                     f"file wrote {held}")
    if man["world_size"] != world_size:
        return  # check_resumable says how to relaunch
    expected = {"server.pt", *(f"rank_{r:04d}.pt" for r in range(world_size)),
                *(f"client_{c:07d}.pt" for c in range(num_clients))}
    missing = sorted(expected - set(man["files"]))
    if missing or man["num_clients"] != num_clients:
        raise differ(f"the manifest lists no {', '.join(missing[:3]) or 'clients'}"
                     f"{' …' if len(missing) > 3 else ''} for {num_clients} clients on "
                     f"{world_size} ranks")
