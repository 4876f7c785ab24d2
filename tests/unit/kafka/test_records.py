"""Dead letters sized to fit their topic (issue 15 item 2)."""

from __future__ import annotations

from consumer.kafka.records import HEADER_CUT, fit_record, record_size


def test_a_record_that_fits_is_left_alone():
    headers = [("a", b"x" * 10)]
    assert fit_record(b"k", b"v" * 100, headers, 10_000) == (b"v" * 100, headers, False)


def test_long_header_values_are_cut_first_and_named():
    headers = [("trace", b"t" * 5000), ("__connect.errors.exception.message", b"m" * 3000)]
    value, out, dropped = fit_record(b"k", b"v" * 1000, headers, 4000)
    assert not dropped and value == b"v" * 1000
    named = dict(out)
    assert len(named["trace"]) == HEADER_CUT
    assert (
        named["imconnector.error.truncated_headers"] == b"trace,__connect.errors.exception.message"
    )
    assert record_size(b"k", value, out) <= 4000


def test_a_value_too_large_for_the_topic_is_left_out_and_its_size_said():
    headers = [("imconnector.error.class", b"poison")]
    value, out, dropped = fit_record(b"k", b"v" * 50_000, headers, 20_000)
    assert dropped and value is None
    assert dict(out)["imconnector.error.value_bytes"] == b"50000"
    assert dict(out)["imconnector.error.class"] == b"poison"
