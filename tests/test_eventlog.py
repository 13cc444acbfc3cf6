"""The JSON Lines event log: destinations, rotation, line safety, reopen."""

import json
import math
import os

import pytest

from probe.eventlog import EventLog, encode


def lines_of(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def record(i):
    # Fixed width, so every line has the same length and the rotation points are exact.
    return {"seq": f"{i:04d}", "calling_ae": f"CT_{i:04d}", "called_ae": "PACS_MAIN", "outcome": "rejected"}


LINE = len(encode(record(0)))


def test_encode_is_compact_and_one_line():
    assert encode({"a": 1, "b": [1, 2], "c": None}) == b'{"a":1,"b":[1,2],"c":null}\n'
    assert all(len(encode(record(i))) == LINE for i in range(100))


def test_stdout(capsys):
    log = EventLog.open("stdout", max_bytes=100, backups=1)  # limits do not apply to stdout
    log.write([record(1), record(2)])
    log.write([])
    log.write([record(3)])
    out = capsys.readouterr().out
    assert [json.loads(line) for line in out.splitlines()] == [record(1), record(2), record(3)]
    assert out.endswith("\n")
    assert log.written == 3 and log.rotations == 0
    assert log.path is None
    log.reopen()  # no-op
    log.close()
    log.close()


def test_none_discards(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = EventLog.open("none", max_bytes=100, backups=1)
    log.write([record(1)])
    log.reopen()
    log.close()
    assert capsys.readouterr() == ("", "")
    assert os.listdir(tmp_path) == []
    assert log.written == 0


def test_file_appends(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(encode({"earlier": True}))
    log = EventLog.open(str(path), max_bytes=1 << 20, backups=3)
    log.write([record(1), record(2)])
    log.write([record(3)])
    log.close()
    assert lines_of(path) == [{"earlier": True}, record(1), record(2), record(3)]
    assert log.written == 3 and log.rotations == 0
    assert sorted(os.listdir(tmp_path)) == ["events.jsonl"]


def test_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = EventLog.open("events.jsonl", max_bytes=1000, backups=1)
    log.write([record(1)])
    log.close()
    assert lines_of(tmp_path / "events.jsonl") == [record(1)]


@pytest.mark.parametrize("batching", ["one batch", "one record per batch", "batches of 4"])
def test_rotation_keeps_backups(tmp_path, batching):
    path = tmp_path / "events.jsonl"
    log = EventLog.open(str(path), max_bytes=3 * LINE, backups=2)  # exactly three lines per file
    records = [record(i) for i in range(10)]
    if batching == "one batch":
        log.write(records)
    elif batching == "one record per batch":
        for r in records:
            log.write([r])
    else:
        for k in range(0, 10, 4):
            log.write(records[k:k + 4])
    log.close()
    # 0-2 went to the file rotated out of existence; then 3-5, 6-8 and 9.
    assert sorted(os.listdir(tmp_path)) == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert lines_of(f"{path}.2") == records[3:6]
    assert lines_of(f"{path}.1") == records[6:9]
    assert lines_of(path) == records[9:]
    assert log.rotations == 3
    assert log.written == 10
    for name in os.listdir(tmp_path):
        assert os.path.getsize(tmp_path / name) <= 3 * LINE


def test_rotation_accounts_for_an_existing_file(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(encode(record(0)) * 2)
    log = EventLog.open(str(path), max_bytes=3 * LINE, backups=1)
    log.write([record(1), record(2)])
    log.close()
    assert lines_of(f"{path}.1") == [record(0), record(0), record(1)]
    assert lines_of(path) == [record(2)]


def test_no_backups_starts_afresh(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog.open(str(path), max_bytes=2 * LINE, backups=0)
    log.write([record(i) for i in range(5)])
    log.close()
    assert os.listdir(tmp_path) == ["events.jsonl"]
    assert lines_of(path) == [record(4)]
    assert log.rotations == 2


def test_line_longer_than_max_bytes_goes_alone(tmp_path):
    path = tmp_path / "events.jsonl"
    big = {"i": 1, "contexts": ["1.2.840.10008.5.1.4.1.1.2"] * 20}
    log = EventLog.open(str(path), max_bytes=LINE, backups=3)
    log.write([record(0), big, record(2)])
    log.close()
    assert lines_of(f"{path}.2") == [record(0)]
    assert lines_of(f"{path}.1") == [big]
    assert lines_of(path) == [record(2)]


def test_external_truncation_is_noticed(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog.open(str(path), max_bytes=3 * LINE, backups=1)
    log.write([record(0), record(1)])
    os.truncate(path, 0)  # logrotate's copytruncate
    log.write([record(2), record(3)])
    log.close()
    assert log.rotations == 0
    assert lines_of(path) == [record(2), record(3)]


def test_hostile_strings_stay_on_one_line(tmp_path, capsys):
    hostile = {
        "calling_ae": "CT\n{\"forged\":1}",
        "called_ae": "PACS\x00\x1b[31m\r",
        "note": "line\u2028separator\u2029paragraph\x85nel",
        "site": "Zürich – 東京 \U0001F3E5",
        "quote": '\\"\t',
    }
    path = tmp_path / "events.jsonl"
    log = EventLog.open(str(path), max_bytes=1 << 20, backups=1)
    log.write([hostile, record(1)])
    log.close()
    data = path.read_bytes()
    assert data.isascii()
    assert data.count(b"\n") == 2
    first = data.split(b"\n")[0]
    assert b"\r" not in first and b"\x00" not in first and b"\x1b" not in first
    assert json.loads(first) == hostile
    assert lines_of(path) == [hostile, record(1)]
    # str.splitlines() (which splits on U+2028, U+0085, ...) agrees that there are two lines.
    assert len(data.decode("ascii").splitlines()) == 2

    out_log = EventLog.open("stdout", max_bytes=1, backups=0)
    out_log.write([hostile])
    out = capsys.readouterr().out
    assert out.isascii() and len(out.splitlines()) == 1 and json.loads(out) == hostile


@pytest.mark.parametrize("bad,error", [({"x": math.nan}, ValueError), ({"x": object()}, TypeError),
                                       ({"x": math.inf}, ValueError)])
def test_unserialisable_record_writes_nothing_of_its_batch(tmp_path, bad, error):
    path = tmp_path / "events.jsonl"
    log = EventLog.open(str(path), max_bytes=1 << 20, backups=1)
    with pytest.raises(error):
        log.write([record(1), bad])
    log.write([record(2)])
    log.close()
    assert lines_of(path) == [record(2)]
    assert log.written == 1


def test_missing_directory_is_an_error_at_open(tmp_path):
    path = tmp_path / "no-such-dir" / "events.jsonl"
    with pytest.raises(FileNotFoundError) as info:
        EventLog.open(str(path), max_bytes=1000, backups=1)
    message = str(info.value)
    assert str(tmp_path / "no-such-dir") in message and "does not exist" in message
    assert info.value.errno == 2
    assert not (tmp_path / "no-such-dir").exists()


def test_destination_is_a_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"cannot open event log {tmp_path}"):
        EventLog.open(str(tmp_path), max_bytes=1000, backups=1)


def test_reopen_after_the_file_was_moved_away(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog.open(str(path), max_bytes=1 << 20, backups=1)
    log.write([record(1)])
    os.rename(path, tmp_path / "events.jsonl-20250101")  # what logrotate does before the SIGHUP
    log.write([record(2)])  # still the moved file: same open descriptor
    log.reopen()
    assert path.exists() and path.stat().st_size == 0
    log.write([record(3)])
    log.close()
    assert lines_of(tmp_path / "events.jsonl-20250101") == [record(1), record(2)]
    assert lines_of(path) == [record(3)]


def test_reopen_when_the_directory_vanished_is_a_clear_error(tmp_path):
    d = tmp_path / "logs"
    d.mkdir()
    log = EventLog.open(str(d / "events.jsonl"), max_bytes=1000, backups=1)
    os.unlink(d / "events.jsonl")
    os.rmdir(d)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        log.reopen()
    d.mkdir()  # the next write tries to open the file again
    log.write([record(1)])
    log.close()
    assert lines_of(d / "events.jsonl") == [record(1)]


def test_closed_log_refuses_writes(tmp_path):
    log = EventLog.open(str(tmp_path / "e.jsonl"), max_bytes=1000, backups=1)
    log.close()
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.write([record(1)])
    with pytest.raises(ValueError, match="closed"):
        log.reopen()


@pytest.mark.parametrize("destination,max_bytes,backups,message", [
    ("", 1000, 1, "destination"),
    (None, 1000, 1, "destination"),
    ("stdout", 0, 1, "max_bytes"),
    ("stdout", -1, 1, "max_bytes"),
    ("stdout", 1.5, 1, "max_bytes"),
    ("stdout", True, 1, "max_bytes"),
    ("stdout", 1000, -1, "backups"),
    ("stdout", 1000, "2", "backups"),
])
def test_invalid_arguments(destination, max_bytes, backups, message):
    with pytest.raises(ValueError, match=message):
        EventLog.open(destination, max_bytes, backups)
