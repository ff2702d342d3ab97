"""The end-of-run summary and ``fedkd-mpi report`` give the same byte reductions and
majority-class rate, computed once (analysis/reader.py), and right under client sampling."""

from __future__ import annotations

import re

import h5py
import numpy as np

from ..conftest import run_job


def _reductions(text: str) -> tuple[str, str]:
    dense = re.search(r"reduction vs mentee sent dense\s+(\S+)", text)[1]
    mentor = re.search(r"reduction vs FedAvg on the mentor\s+(\S+)", text)[1]
    return dense, mentor


def test_summary_and_report_agree_under_sampling(tiny_run):
    res, out = tiny_run(3, "data.num_clients=10", "train.sample_count=3")
    assert res.returncode == 0, res.stderr
    with h5py.File(out, "r") as f:
        up, down = f["clients/bytes_up"][()], f["clients/bytes_down"][()]
        messages = int((up > 0).sum() + (down > 0).sum())  # what was actually sent
        sent = int(up.sum() + down.sum())
        by_hand = (f"{f.attrs['dense_bytes_mentee'] * messages / sent:.1f}x",
                   f"{f.attrs['dense_bytes_mentor'] * messages / sent:.1f}x")
        assert f["clients/participated"][()].sum(1).tolist() == [3, 3, 3]
        assert np.isfinite(f["rounds/mentor_f1"][()]).all()  # sampled mentors averaged too
        hist = f["partition/test_label_hist"][()]
        final_acc = (f["rounds/mentor_accuracy"][-1], f["rounds/mentee_accuracy"][-1])
    # every client's held-out labels, counted; the constant answer's accuracy, by hand
    assert hist.shape[0] == 10 and (hist.sum(1) > 0).all()
    majority = f"{(hist.max(1) / hist.sum(1)).mean():.4f}"
    report = run_job(1, "report", str(out), "--no-figures", launcher=False, timeout=60)
    assert report.returncode == 0, report.stderr
    assert _reductions(res.stdout) == _reductions(report.stdout) == by_hand
    acc = re.search(r"^accuracy\s+(\S+)\s+(\S+)\s+(\S+)\s*$", res.stdout, re.M)
    assert acc is not None, res.stdout
    assert acc.groups() == (f"{final_acc[0]:.4f}", f"{final_acc[1]:.4f}", majority)
    assert re.search(rf"majority-class rate of the held-out data\s+{majority}", report.stdout)
    # every client sending every round would be 3.3x more messages than were sent
    assert messages == 2 * 3 * 3
