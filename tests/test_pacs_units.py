"""PACS pieces that need no server: addresses, credentials, retries, queries, run state, the
retrieval thread, and the command line's refusals."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from napari_icnn.batch.summary import Row, SummaryFile
from napari_icnn.cli import main
from napari_icnn.errors import ConfigError
from napari_icnn.pacs import (
    InstanceRef,
    PacsRefused,
    PacsSettings,
    PacsUnavailable,
    Query,
    RetryPolicy,
    load_settings,
    parse_pacs_url,
)
from napari_icnn.pacs.remote import is_image_sop_class
from napari_icnn.pacs.source import StagedSource, staged_path
from napari_icnn.pacs.store import PacsState, SummaryTail

SECRET = "Zq9-very-secret-!"


# --------------------------------------------------------------------------- addresses


def test_addresses_parse_into_their_parts():
    u = parse_pacs_url("dicomweb+http://127.0.0.1:8042/dicom-web/")
    assert (u.protocol, u.scheme, u.host, u.port, u.path) == ("dicomweb", "http", "127.0.0.1", 8042, "/dicom-web")
    assert u.base_url == "http://127.0.0.1:8042/dicom-web" and str(u) == "dicomweb+http://127.0.0.1:8042/dicom-web"
    s = parse_pacs_url("dicomweb+https://pacs.example.org/dcm4chee-arc/aets/DCM4CHEE/rs")
    assert (s.scheme, s.port, s.path) == ("https", 443, "/dcm4chee-arc/aets/DCM4CHEE/rs")
    v6 = parse_pacs_url("dicomweb+http://[::1]:8042/dicom-web")
    assert v6.host == "::1" and v6.base_url == "http://[::1]:8042/dicom-web"
    d = parse_pacs_url("dimse://ORTHANC@127.0.0.1:4242")
    assert (d.protocol, d.aet, d.host, d.port, str(d)) == ("dimse", "ORTHANC", "127.0.0.1", 4242,
                                                           "dimse://ORTHANC@127.0.0.1:4242")
    assert parse_pacs_url("dimse://MY%20PACS@host:104").aet == "MY PACS"


@pytest.mark.parametrize("text, message", [
    ("", "give a PACS address"),
    ("http://127.0.0.1:8042/dicom-web", "unknown kind of address"),
    ("dicomweb+http://127.0.0.1:8042/dicom-web/studies", "without /studies"),
    ("dicomweb+http://127.0.0.1:8042/dicom-web?x=1", "no query"),
    ("dimse://127.0.0.1:4242", "AE title"),
    ("dimse://ORTHANC@127.0.0.1", "DICOM port"),
    ("dimse://THIS_AE_TITLE_IS_TOO_LONG@127.0.0.1:4242", "longer than 16"),
    ("dimse://ORTHANC@127.0.0.1:4242/path", "nothing after the port"),
    ("dicomweb+http://127.0.0.1:99999/x", "not a PACS address"),
])
def test_bad_addresses_are_refused_with_the_reason(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_pacs_url(text, "--from")


def test_credentials_in_an_address_are_refused_and_not_repeated():
    with pytest.raises(ConfigError) as info:
        parse_pacs_url(f"dicomweb+http://alice:{SECRET}@127.0.0.1:8042/dicom-web", "--store-to")
    text = str(info.value)
    assert "--store-to" in text and "ICNN_PACS_USER" in text and "***@" in text
    assert SECRET not in text and "alice" not in text


# --------------------------------------------------------------------------- credentials


def test_credentials_come_from_the_environment():
    basic = load_settings(env={"ICNN_PACS_USER": "alice", "ICNN_PACS_PASSWORD": SECRET})
    assert basic.credentials.kind == "basic" and basic.credentials.password == SECRET
    assert basic.aet == "ICNN" and basic.secrets == (SECRET,)
    assert SECRET not in repr(basic)
    bearer = load_settings(env={"ICNN_PACS_TOKEN": SECRET, "ICNN_PACS_AET": "FUNDUS1"})
    assert bearer.credentials.kind == "bearer" and bearer.aet == "FUNDUS1"
    assert load_settings(env={}).credentials.kind == "none"
    with pytest.raises(ConfigError, match="not both"):
        load_settings(env={"ICNN_PACS_USER": "a", "ICNN_PACS_PASSWORD": SECRET, "ICNN_PACS_TOKEN": "t"})
    with pytest.raises(ConfigError, match="password is missing"):
        load_settings(env={"ICNN_PACS_USER": "alice"})


def _private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_settings_file_in_json_or_toml_overrides_the_environment(tmp_path):
    env = {"ICNN_PACS_USER": "env-user", "ICNN_PACS_PASSWORD": "env-pw"}
    js = _private(tmp_path / "pacs.json", json.dumps({"user": "alice", "password": SECRET, "aet": "FUNDUS",
                                                      "retries": 1, "backoff": 0.1, "timeout": 5}))
    s = load_settings(js, env=env)
    assert (s.credentials.user, s.credentials.password, s.aet) == ("alice", SECRET, "FUNDUS")
    assert s.retry.delays == (0.1,) and s.timeout == 5.0 and s.for_store() is s.credentials
    toml = _private(tmp_path / "pacs.toml", f'token = "{SECRET}"\n[store]\nuser = "bob"\npassword = "pw2"\n')
    t = load_settings(toml, env=env)
    assert t.credentials.kind == "bearer" and t.for_store().user == "bob" and set(t.secrets) == {SECRET, "pw2"}
    plain = _private(tmp_path / "plain.toml", "retries = 0\n", mode=0o644)  # no secret: any mode will do
    assert load_settings(plain, env=env).credentials.user == "env-user"


def test_a_settings_file_others_can_read_is_refused(tmp_path):
    path = _private(tmp_path / "pacs.json", json.dumps({"user": "alice", "password": SECRET}), mode=0o644)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert "chmod 600" in str(info.value) and "0644" in str(info.value) and SECRET not in str(info.value)


@pytest.mark.parametrize("text, message", [
    ('{"user": "a", "pasword": "x"}', "unknown setting"),
    (f'password = "{SECRET}\nuser = "a"\n', "not valid JSON or TOML"),
    ('{"user": "a", "password": "p", "retries": -1}', "retries"),
    ('{"store": {"aet": "X"}}', "'store' must be a table"),
    ('{"aet": "A\\\\B"}', "backslash"),
])
def test_bad_settings_files_are_refused_without_quoting_secrets(tmp_path, text, message):
    path = _private(tmp_path / "pacs.conf", text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(path, env={})
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "missing.toml", env={})


# --------------------------------------------------------------------------- retries


def test_retries_back_off_exponentially_then_give_up():
    policy = RetryPolicy()
    assert policy.delays == (0.5, 1.0, 2.0)
    waits, calls = [], []

    def down():
        calls.append(1)
        raise PacsUnavailable("pacs: no connection (connection refused)")

    with pytest.raises(PacsUnavailable, match="gave up after 4 tries"):
        policy.call(down, sleep=waits.append)
    assert len(calls) == 4 and waits == [0.5, 1.0, 2.0]


def test_a_refusal_is_not_retried_and_a_recovery_returns_the_value():
    policy = RetryPolicy(retries=3, backoff=0.01)
    calls = []

    def refused():
        calls.append(1)
        raise PacsRefused("pacs: refused (HTTP 400)")

    with pytest.raises(PacsRefused):
        policy.call(refused, sleep=lambda s: None)
    assert len(calls) == 1
    answers = iter([PacsUnavailable("busy"), PacsUnavailable("busy"), "the answer"])

    def flaky():
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    told = []
    assert policy.call(flaky, on_retry=lambda e, d: told.append(d), sleep=lambda s: None) == "the answer"
    assert told == [0.01, 0.02]
    with pytest.raises(ConfigError):
        RetryPolicy(retries=-1)
    with pytest.raises(ConfigError):
        RetryPolicy(backoff=float("nan"))


# --------------------------------------------------------------------------- queries and filters


def test_queries_need_a_study_or_a_date_and_parse_modalities():
    with pytest.raises(ConfigError, match="--study UID or --since"):
        Query()
    with pytest.raises(ConfigError, match="YYYYMMDD"):
        Query(since="2024-01-01")
    with pytest.raises(ConfigError, match="not a Study Instance UID"):
        Query(studies=("1.2.3/../x",))
    q = Query(studies=("1.2.3", "1.2.3"), modalities="op, xc")
    assert q.studies == ("1.2.3",) and q.modalities == ("OP", "XC") and q.wants("op") and not q.wants("CT")
    assert Query(since="20240101", modalities="all").modalities is None
    with pytest.raises(ConfigError, match="modality"):
        Query(since="20240101", modalities="O P")


def test_only_image_sop_classes_are_pulled():
    assert is_image_sop_class("1.2.840.10008.5.1.4.1.1.77.1.5.1")  # OP 8 bit
    assert is_image_sop_class("1.2.840.10008.5.1.4.1.1.2")  # CT: pulled only with --modality, then declined
    assert not is_image_sop_class("1.2.840.10008.5.1.4.1.1.66.4")  # segmentation
    assert not is_image_sop_class("1.2.840.10008.5.1.4.1.1.88.33")  # comprehensive SR
    assert not is_image_sop_class("1.2.840.10008.5.1.4.1.1.66")  # raw data


def test_staged_names_come_from_uids_only(tmp_path):
    ref = InstanceRef("1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.77.1.5.1")
    path = staged_path(tmp_path, ref)
    assert path.parent.parent == tmp_path and path.name == "1.2.3.4.5.dcm" and "1.2.3" not in path.parent.name
    with pytest.raises(ValueError):
        InstanceRef("1.2.3", "1.2.3.4", "../../etc/passwd")


# --------------------------------------------------------------------------- state and summary tail


def test_state_round_trips_and_an_unreadable_one_is_left_alone(tmp_path):
    path = tmp_path / "pacs_state.json"
    state = PacsState(path, interval=3600)
    state.mark_stored("dimse://PACS@h:104", "ab/1.2.seg.dcm", "1.2.9", "stored")
    assert not path.exists()  # written on save (or every interval), not on every result
    state.set_not_retrieved("dicomweb+http://h:80/rs", {"1.2.5": "no connection"})
    state.save()
    again = PacsState(path)
    assert again.is_stored("dimse://PACS@h:104", "ab/1.2.seg.dcm")
    assert not again.is_stored("dicomweb+http://h:80/rs", "ab/1.2.seg.dcm")  # per PACS
    assert json.loads(path.read_text())["not_retrieved"] == {"dicomweb+http://h:80/rs": {"1.2.5": "no connection"}}
    path.write_text('{"stored": ')
    with pytest.raises(ConfigError, match="move it away"):
        PacsState(path)
    assert path.read_text() == '{"stored": '


def test_summary_tail_reads_each_new_complete_row_once(tmp_path):
    csv = tmp_path / "summary.csv"
    with SummaryFile(csv) as summary:
        summary.append([Row("/a.dcm", None, "1.2", "ok", outputs=("x/1.2.seg.dcm",))])
        tail = SummaryTail(csv)
        assert tail.new_rows() == []
        summary.append([Row("/b.dcm", 0, "1.3", "ok"), Row("/b.dcm", 1, "1.3", "declined", "not a fundus")])
        with open(csv, "a") as fh:
            fh.write("/c.dcm,,1.4,ok,")  # a row still being written
        rows = tail.new_rows()
        assert [(r.input_path, r.frame, r.status) for r in rows] == [("/b.dcm", 0, "ok"), ("/b.dcm", 1, "declined")]
        assert tail.new_rows() == []
    # a run that died mid-row: the next run's tail starts where the batch job cuts the torn row
    tail = SummaryTail(csv)
    with SummaryFile(csv) as summary:
        summary.append([Row("/d.dcm", None, "1.5", "ok")])
    assert [r.input_path for r in tail.new_rows()] == ["/d.dcm"]


# --------------------------------------------------------------------------- the retrieval thread


class _FakeRemote:
    """Serves instances by SOP UID; 'down' ones raise as a dead PACS does, 'bad' ones are refused."""

    url = "dimse://FAKE@127.0.0.1:1"

    def __init__(self, bad=(), down_from=None):
        self.bad, self.down_from = set(bad), down_from
        self.calls: list[str] = []
        self.closed = False

    def retrieve(self, ref, target):
        self.calls.append(ref.sop_instance_uid)
        if self.down_from is not None and ref.sop_instance_uid >= self.down_from:
            raise PacsUnavailable("fake: no connection (connection refused)")
        if ref.sop_instance_uid in self.bad:
            raise PacsRefused("fake: not found")
        target.write_bytes(b"DICM" + ref.sop_instance_uid.encode())

    def close(self):
        self.closed = True


def _refs(n):
    return [InstanceRef("1.2", "1.2.3", f"1.2.3.{i}", "1.2.840.10008.5.1.4.1.1.77.1.5.1") for i in range(n)]


def test_staged_source_keeps_order_skips_done_and_records_failures(tmp_path):
    refs = _refs(5)
    done = {str(staged_path(tmp_path, refs[1]))}
    remote = _FakeRemote(bad={"1.2.3.3"})
    src = StagedSource(lambda: remote, refs, tmp_path, frozenset(done), RetryPolicy(retries=0))
    got = list(src)
    src.close()
    assert got == [str(staged_path(tmp_path, r)) for r in refs if r.sop_instance_uid != "1.2.3.3"]
    assert remote.calls == ["1.2.3.0", "1.2.3.2", "1.2.3.3", "1.2.3.4"]  # the done one is not retrieved
    assert src.n_retrieved == 3 and set(src.failed) == {"1.2.3.3"} and remote.closed
    assert Path(got[0]).read_bytes() == b"DICM1.2.3.0"


def test_staged_source_stops_asking_a_pacs_that_is_down(tmp_path):
    remote = _FakeRemote(down_from="1.2.3.2")
    src = StagedSource(lambda: remote, _refs(6), tmp_path, retry=RetryPolicy(retries=2, backoff=0.001))
    got = list(src)
    src.close()
    assert len(got) == 2 and set(src.failed) == {f"1.2.3.{i}" for i in range(2, 6)}
    assert remote.calls.count("1.2.3.2") == 3 and remote.calls[-1] == "1.2.3.2"  # retried, then no more calls
    assert "stopped answering" in src.failed["1.2.3.5"]


def test_staged_source_stays_a_bounded_number_ahead(tmp_path):
    remote = _FakeRemote()
    src = StagedSource(lambda: remote, _refs(20), tmp_path, ahead=3).start()
    deadline = time.monotonic() + 60  # a busy machine may take a while to fill the queue; it never overfills it
    while len(remote.calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # time to overrun the bound, were it not kept
    assert 3 <= len(remote.calls) <= 5  # the queue holds 3, one more may be in hand
    first = next(iter(src))
    assert first.endswith("1.2.3.0.dcm")
    src.close()
    assert not any(t.name == "icnn-pacs-retrieve" for t in threading.enumerate())


# --------------------------------------------------------------------------- command line refusals


def _one_line(capsys) -> str:
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_usage_errors_exit_2_with_one_line(tmp_path, tiny_bundle, capsys):
    out = str(tmp_path / "out")
    base = ["--out", out, "--model", str(tiny_bundle), "--workers", "0"]
    url = "dicomweb+http://127.0.0.1:9/dicom-web"
    cases = [
        ([str(tmp_path), "--study", "1.2.3", *base], "--study: go with --from"),
        ([str(tmp_path), "--from", url, "--study", "1.2.3", *base], "not both"),
        (["--from", url, *base], "--study UID or --since"),
        (["--from", url, "--since", "2024", *base], "YYYYMMDD"),
        ([str(tmp_path), "--pacs-config", str(tmp_path / "p.toml"), *base], "--pacs-config: goes with"),
        (["--from", "ftp://host/x", "--since", "20240101", *base], "unknown kind of address"),
    ]
    for args, message in cases:
        assert main(["infer", *args]) == 2, args
        assert message in _one_line(capsys)
    assert not os.path.exists(out)


def test_an_unreachable_pacs_is_a_set_up_error_after_bounded_retries(tmp_path, tiny_bundle, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _private(tmp_path / "pacs.toml", f'user = "u"\npassword = "{SECRET}"\nretries = 2\nbackoff = 0.05\n')
    out = tmp_path / "out"
    for url in (f"dicomweb+http://127.0.0.1:{port}/dicom-web", f"dimse://PACS@127.0.0.1:{port}"):
        start = time.monotonic()
        code = main(["infer", "--from", url, "--study", "1.2.3", "--out", str(out), "--model", str(tiny_bundle),
                     "--pacs-config", str(cfg)])
        took = time.monotonic() - start
        assert code == 2
        err = _one_line(capsys)
        assert "--from" in err and "no connection" in err and "gave up after 3 tries" in err and SECRET not in err
        assert took >= 0.15  # waited 0.05 + 0.1 s between tries (an upper bound would time the machine)
    assert not out.exists()


def test_settings_default_to_icnn_and_check_the_ae_title():
    assert PacsSettings().aet == "ICNN"
    with pytest.raises(ConfigError, match="16"):
        PacsSettings(aet="X" * 17)


# --------------------------------------------------------------------------- the batch job's file stream


def test_the_batch_job_takes_files_as_they_arrive_and_skips_finished_ones(tmp_path, tiny_bundle):
    from test_batch_data import op

    from napari_icnn.batch import BatchConfig, infer_iter
    from napari_icnn.progress import drain

    staging = tmp_path / "staging"
    staging.mkdir()
    made = []

    def arriving():
        for i in range(2):  # each file exists only once the job asks for it, as a download does
            path = op(staging / f"im{i}.dcm", seed=50 + i, size=128)
            made.append(path.name)
            yield str(path)

    cfg = BatchConfig(inputs=(str(staging),), out=str(tmp_path / "out"), model=str(tiny_bundle), workers=0,
                      formats=("json",))
    first = drain(infer_iter(cfg, files=arriving(), total=2))
    assert (first.n_ok, first.n_skipped) == (2, 0) and made == ["im0.dcm", "im1.dcm"]
    again = drain(infer_iter(cfg, files=[str(staging / "im1.dcm"), str(staging / "im0.dcm")], total=0))
    assert (again.n_processed, again.n_skipped, again.exit_code) == (0, 2, 0)
