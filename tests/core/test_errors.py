"""The error tree: stable codes, and every class projects to an exit code and an HTTP status."""

from frieze.core import errors


def test_codes_are_unique_and_projectable() -> None:
    classes = errors.all_error_classes()
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), codes
    for c in classes:
        assert 1 <= c.exit_code < 128
        assert 400 <= c.http_status < 600


def test_to_dict_has_no_traceback_and_plain_details() -> None:
    e = errors.NotFound("snapshot 'abc' not found", snapshot="abc", where=object())
    d = e.to_dict()
    assert d["code"] == "not_found" and d["message"] == "snapshot 'abc' not found"
    assert d["details"]["snapshot"] == "abc" and isinstance(d["details"]["where"], str)
    assert d["retryable"] is False
    assert errors.TransientStorageError().retryable is True
