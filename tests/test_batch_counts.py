"""The batch's one counts type (no Qt): what its progress events carry, what its summary holds, and how
a stopped run ends with a summary of what it did."""

from __future__ import annotations

import pytest
from test_batch_data import png

from napari_icnn.batch import BatchConfig, BatchCounts, BatchSummary, Stopped, infer_iter, infer_until_stopped
from napari_icnn.batch.summary import Row, last_rows, read_rows
from napari_icnn.errors import Cancelled
from napari_icnn.progress import Message, Progress, drain


def test_counts_add_files_and_travel_typed_on_progress_events():
    counts = BatchCounts(files_total=3)
    counts = counts.add_file([Row("a", None, "", "ok"), Row("a", 1, "", "declined", "red-free")])
    counts = counts.add_file([Row("b", None, "", "error", "truncated")])
    assert (counts.ok, counts.error, counts.declined, counts.files_done, counts.rows) == (1, 1, 1, 2, 3)
    event = counts.progress()
    assert (event.stage, event.done, event.total) == ("infer", 2, 3)
    assert dict(event.counts) == {"ok": 1, "error": 1, "declined": 1} == counts.by_status()
    assert event.detail == "1 ok, 1 error, 1 declined"
    assert BatchCounts.from_progress(event) == BatchCounts(1, 1, 1, 2, 3)
    # Other stages, and text alone, carry no counts: nothing is read from the detail.
    assert BatchCounts.from_progress(Progress("finding inputs", 2000, 0)) is None
    assert BatchCounts.from_progress(Progress("infer", 1, 3, "1 ok, 0 error, 0 declined")) is None


def test_summary_holds_the_counts_and_says_what_was_done():
    done = BatchSummary(BatchCounts(4, 1, 1, 5, 5, skipped=2, skipped_files=2), "/r/summary.csv", 2.0, 3.0)
    assert done.exit_code == 3 and not done.stopped
    assert (done.n_ok, done.n_error, done.n_declined, done.n_skipped, done.n_processed) == (4, 1, 1, 2, 6)
    assert done.describe() == ("4 ok, 1 error, 1 declined, 2 skipped (done earlier) in 2.0 s (3.00 images/s); "
                               "summary: /r/summary.csv")
    assert BatchSummary(BatchCounts(skipped=3, skipped_files=3), "s", 0.1, 0.0).exit_code == 0
    assert BatchSummary(BatchCounts(skipped=3, skipped_not_ok=1), "s", 0.1, 0.0).exit_code == 3
    stopped = BatchSummary(BatchCounts(2, 0, 1, 3, 9), "/r/summary.csv", 1.0, 3.0, stopped=True)
    assert stopped.describe() == ("Stopped after 3 of 9 files (2 ok, 0 error, 1 declined). Finished files keep "
                                  "their rows in /r/summary.csv; run again into the same output folder to continue.")


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        png(src / f"p{i}.png", seed=i, size=160)
    (src / "junk.png").write_bytes(b"not an image")
    return src


def _cfg(folder, out, tiny_bundle):
    return BatchConfig(inputs=(str(folder),), out=str(out), model=str(tiny_bundle), workers=0, batch=2,
                       formats=("json",))


def test_the_run_counts_on_its_events_what_its_summary_says(folder, tmp_path, tiny_bundle):
    events = []
    summary = drain(infer_iter(_cfg(folder, tmp_path / "out", tiny_bundle)), events.append)
    live = [c for c in (BatchCounts.from_progress(e) for e in events if isinstance(e, Progress)) if c]
    assert live[0] == BatchCounts(files_total=5)
    assert [c.files_done for c in live] == list(range(6))
    assert live[-1] == BatchCounts(4, 1, 0, 5, 5) and summary.counts == live[-1]
    rows = list(read_rows(summary.summary_csv))
    assert summary.counts.by_status() == {s: sum(r.status == s for r in rows) for s in ("ok", "error", "declined")}
    assert [r.input_path for r in last_rows(summary.summary_csv, 2)] == [r.input_path for r in rows[-2:]]
    assert last_rows(tmp_path / "none.csv", 2) == []

    again = drain(infer_iter(_cfg(folder, tmp_path / "out", tiny_bundle)))
    assert again.counts == BatchCounts(skipped=5, skipped_files=5, skipped_not_ok=1) and again.exit_code == 3


def test_a_stopped_run_ends_with_the_summary_of_what_it_did(folder, tmp_path, tiny_bundle):
    seen = []

    def stop():
        return any(isinstance(e, Progress) and e.done >= 2 for e in seen)

    with pytest.raises(Stopped) as raised:  # a Cancelled, as before, for the callers that stop on it
        drain(infer_iter(_cfg(folder, tmp_path / "a", tiny_bundle), should_stop=stop), seen.append)
    assert isinstance(raised.value, Cancelled) and raised.value.summary.stopped

    seen.clear()
    gen = infer_until_stopped(_cfg(folder, tmp_path / "b", tiny_bundle), should_stop=stop)
    summary = drain(gen, seen.append)
    rows = list(read_rows(tmp_path / "b" / "summary.csv"))
    assert summary.stopped and summary.counts.files_total == 5
    assert 2 <= summary.counts.files_done < 5 and summary.counts.rows == len(rows)
    assert summary.describe().startswith(f"Stopped after {summary.counts.files_done} of 5 files")
    assert any(isinstance(e, Message) for e in seen)

    rest = drain(infer_until_stopped(_cfg(folder, tmp_path / "b", tiny_bundle)))
    assert not rest.stopped and rest.counts.files_done == 5 - len(rows) and rest.counts.skipped == len(rows)
