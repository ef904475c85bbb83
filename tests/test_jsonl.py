"""The shared JSONL reader: blank lines skipped, a limit honoured, each bad line named."""

import pytest

from entropix_mlx.jsonl import read_records


def test_reads_records_up_to_the_limit(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2, "b": 0}\n{"a": 3}\n')
    assert read_records(path, ["a"]) == [{"a": 1}, {"a": 2, "b": 0}, {"a": 3}]
    assert read_records(path, ["a"], limit=2) == [{"a": 1}, {"a": 2, "b": 0}]


@pytest.mark.parametrize(
    "line, message",
    [
        ("[1, 2]", r"r.jsonl:2 is not a row \(not a JSON object\)"),
        ('{"b": 1}', r"r.jsonl:2 is not a row \(missing a\)"),
        ("{oops", r"r.jsonl:2 is not JSON"),
    ],
)
def test_bad_line_is_named(tmp_path, line, message):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_records(path, ["a"], "a row")
