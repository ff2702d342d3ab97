"""Loading a run configuration: YAML read safely (size, depth, aliases and duplicate keys
bounded), dotted ``key=value`` overrides, validation against the schema (schema.py).

Every error is reduced to one line naming the field and what would be valid
(:class:`ConfigError`); the CLI prints it once, on rank 0, and exits with code 2.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fedkd_mpi.config.schema import _MOVED_TO_SVD, Config, ConfigError


def _format_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = _clip(_printable(".".join(str(p) for p in e["loc"])))
    if e["type"] == "extra_forbidden":
        parent = _schema_at(e["loc"][:-1])
        valid = ", ".join(parent.model_fields) if parent else "see docs"
        return f"config error: unknown key '{loc}' (valid keys here: {valid})"
    msg = " ".join(str(e["msg"]).split())  # one line, whatever a validator wrote
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    where = f"'{loc}'" if loc else "config"
    got = e.get("input")
    got_txt = "" if isinstance(got, dict) or got is None else f" (got {_short_repr(got)})"
    return f"config error: {where}: {msg}{got_txt}"


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _schema_at(loc: tuple) -> type[BaseModel] | None:
    cls: type[BaseModel] = Config
    for part in loc:
        field = cls.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type):
            return None
        if not issubclass(field.annotation, BaseModel):
            return None
        cls = field.annotation
    return cls


def apply_override(tree: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a nested dict.

    A mapping given for a section is merged into it (``model.mentor={layers: 2}`` keeps the
    mentor's other keys); an empty one (``train={}``) sets nothing and is refused instead of
    silently resetting the section."""
    if "=" not in item:
        raise ConfigError(f"config error: override '{_clip(item)}' is not of the form key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) == 2 and parts[0] == "fedkd" and parts[1] in _MOVED_TO_SVD:
        parts = ["svd", _MOVED_TO_SVD[parts[1]]]  # the old name of an svd.* key
    if not all(parts):
        raise ConfigError(f"config error: override key '{_clip(key)}' is malformed")
    if len(raw.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config error: override '{_clip(key)}': the value is longer than "
                          f"{MAX_CONFIG_BYTES // 1024} KiB")
    try:
        value = _parse_yaml(raw) if raw.strip() else ""
    except _YAMLRefused as exc:
        raise ConfigError(f"config error: override '{_clip(key)}': the value {exc.what}") \
            from None
    except Exception:  # not YAML: the text itself (e.g. a name with ':' in it)
        value = raw
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:  # absent, or an empty section in the file ('train:')
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"config error: '{_clip(key)}': '{p}' is not a section")
        node = child
    if isinstance(value, dict):
        if not value:
            raise ConfigError(f"config error: override '{_clip(item)}' sets no key; give "
                              f"the keys to change ({key.strip()}.<key>=value)")
        old = node.get(parts[-1])
        if isinstance(old, dict):
            value = _merged(old, value)
    node[parts[-1]] = value


def _merged(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k),
                                                                          dict) else v
    return out


def _clip(text: str, limit: int = 80) -> str:
    text = _printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable(text: str) -> str:
    """Control characters (a newline in a key) escaped: an error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# ---------------------------------------------------------------------------------------
# reading the YAML file: bounded in size, depth and expansion; duplicate keys refused
# ---------------------------------------------------------------------------------------
#: a config file (or an override value) larger than this is refused unread; configs are a few
#: KiB, and parsing is linear in the size (about 1 s per 64 KiB here in pure Python)
MAX_CONFIG_BYTES = 256 * 1024
#: values in the document once aliases are expanded, and nesting depth: far above any config
MAX_YAML_NODES = 20_000
MAX_YAML_DEPTH = 32


class _YAMLRefused(yaml.YAMLError):
    """A YAML document refused for its shape rather than its syntax."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _ConfigLoader(_Loader):  # type: ignore[misc, valid-type]
    """``yaml.safe_load`` that refuses duplicate keys, alias bombs and deep nesting before
    building anything (the node graph is checked without expanding it)."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_shape(node)
        return self.construct_document(node)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or \
                        not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _YAMLRefused(f"has the key {_short_repr(key)} twice (lines "
                                       f"{seen[key]} and {line})")
                seen[key] = line
        return super().construct_mapping(node, deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_shape(root: yaml.Node) -> None:
    """Expanded size and depth of a node graph, without expanding it (memoised, iterative:
    no recursion, so no stack to overflow); cycles (a recursive alias) refused."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        nid = id(node)
        if finished:
            kids = _children(node)
            size[nid] = 1 + sum(size[id(k)] for k in kids)
            depth[nid] = 1 + max((depth[id(k)] for k in kids), default=0)
            active.discard(nid)
            if size[nid] > MAX_YAML_NODES:
                raise _YAMLRefused(f"expands to more than {MAX_YAML_NODES} values (YAML "
                                   "aliases?)")
            if depth[nid] > MAX_YAML_DEPTH:
                raise _YAMLRefused(f"is nested more than {MAX_YAML_DEPTH} levels deep")
            continue
        if nid in size:
            continue
        if nid in active:
            raise _YAMLRefused(f"refers to itself (a recursive YAML alias at line "
                               f"{node.start_mark.line + 1})")
        active.add(nid)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def _parse_yaml(text: str) -> Any:
    """One YAML document through :class:`_ConfigLoader`."""
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_config_text(p: Path) -> str:
    """The text of a config file: a regular file, at most MAX_CONFIG_BYTES, UTF-8."""
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"config error: file '{p}' not found") from None
    except (OSError, ValueError) as exc:  # permission on a folder, loop, NUL in the name
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"config error: cannot read '{p}' ({why})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"config error: '{p}' is a directory, not a config file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a character device" if stat.S_ISCHR(st.st_mode) else "a block device"
                if stat.S_ISBLK(st.st_mode) else "a named pipe" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise ConfigError(f"config error: '{p}' is {kind}, not a config file")
    too_big = (f"config error: '{p}' is larger than {MAX_CONFIG_BYTES // 1024} KiB; a config "
               "file is a few KiB of YAML")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(too_big)
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config error: cannot read '{p}' ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(too_big)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config error: cannot read '{p}' (not UTF-8 text)") from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load YAML (or defaults when ``path`` is None), apply overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        text = _read_config_text(p)
        try:
            tree = _parse_yaml(text)
        except _YAMLRefused as exc:
            raise ConfigError(f"config error: '{p}' {exc.what}") from None
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" at line {line + 1}" if line is not None else ""
            raise ConfigError(f"config error: '{p}' is not valid YAML{where}") from None
        except RecursionError:  # the pure-Python parser on deep nesting
            raise ConfigError(f"config error: '{p}' is nested more than {MAX_YAML_DEPTH} "
                              "levels deep") from None
        except Exception as exc:  # e.g. an integer of 5000 digits
            raise ConfigError(f"config error: '{p}' is not valid YAML "
                              f"({_clip(str(exc) or type(exc).__name__)})") from None
        if tree is None:
            tree = {}
        if not isinstance(tree, dict):
            raise ConfigError(f"config error: '{p}' must hold a mapping of keys")
        try:
            _resolve_data_paths(tree, p.parent)
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. '~nosuchuser/x.csv'
            raise ConfigError(f"config error: '{p}': data paths: {_clip(str(exc), 200)}") \
                from None
        try:  # old svd keys in the file move first, so that overrides of either name win
            tree = Config._moved_keys(tree)
        except ValueError as exc:
            raise ConfigError(f"config error: '{p}': {exc}") from None
    for item in overrides:
        apply_override(tree, item)
    return config_from_dict(tree)


def _resolve_data_paths(tree: dict[str, Any], base: Path) -> None:
    """Relative ``data.path`` / ``data.test_path`` written in a config file: made absolute
    against the file's folder (overrides, applied later, stay relative to the working dir)."""
    data = tree.get("data")
    if not isinstance(data, dict):
        return
    for key in ("path", "test_path"):
        value = data.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            data[key] = os.path.abspath(base / value)


def config_from_dict(tree: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    except (ConfigError, RecursionError):
        raise
    except Exception as exc:  # a validator failing on an input nobody foresaw: still one line
        raise ConfigError(f"config error: {type(exc).__name__}: "
                          f"{_clip(str(exc).strip() or '-', 200)}") from None


def config_from_yaml_text(text: str) -> Config:
    return config_from_dict(yaml.safe_load(text) or {})


def changed_settings(tree: dict[str, Any], skip: tuple[str, ...] = ("output", "runtime")
                     ) -> list[str]:
    """``key=value`` for every setting of a resolved config (``Config.model_dump`` or the run
    file's ``config`` attr) that differs from the default, dotted, in schema order; the
    sections in ``skip`` (where the output goes, how it runs) left out."""
    default = Config().model_dump(mode="json")

    def walk(node: Any, ref: Any, path: str) -> list[str]:
        if isinstance(node, dict):
            keys = list(ref) + [k for k in node if not isinstance(ref, dict) or k not in ref] \
                if isinstance(ref, dict) else list(node)
            return [item for k in keys if k in node for item in
                    walk(node[k], ref.get(k) if isinstance(ref, dict) else None,
                         f"{path}.{k}" if path else str(k))]
        return [] if node == ref else [f"{path}={node}"]

    return [item for item in walk(tree, default, "") if item.split("=", 1)[0].split(".")[0]
            not in skip]
