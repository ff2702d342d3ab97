"""``data.name: hf_disk``: a folder written by Hugging Face ``datasets``' ``save_to_disk``,
read offline with pyarrow only (``datasets`` is not needed, nor imported).

The folder holds either one Dataset (``state.json``, ``dataset_info.json`` and the Arrow IPC
*stream* files listed in ``state.json``'s ``_data_files``) or a DatasetDict
(``dataset_dict.json`` listing ``splits``, one such folder per split). Training rows come from
the ``train`` split (or the only split); a ``test`` split is the official test split
(``test_idx``; needs ``data.test_protocol: global``). Other splits are not read. Columns, the
dropping of unusable rows and the errors are those of ``data.name: table``
(:mod:`fedkd_mpi.data.table`); a ``ClassLabel`` label column keeps its own class names in its
own order (the value -1, "no label", counts as missing).
"""

from __future__ import annotations

from pathlib import Path

from fedkd_mpi.data.base import Corpus
from fedkd_mpi.data.table import FileDataset


class HFDisk(FileDataset):
    """``hf_disk``: a ``datasets.save_to_disk`` folder (``data.path``), read with pyarrow."""

    name = "hf_disk"
    input_kind = "tokens"  # feature_columns: "features" (set per instance)
    def _read(self, key: str) -> tuple[Corpus, dict]:
        from fedkd_mpi.data import _arrow as io  # pyarrow: only when this dataset loads

        return io._load(key, io._stamp(Path(self.cfg.path).expanduser()))
