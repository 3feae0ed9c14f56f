"""The reason named when tritonserver dies comes from the current process's part of its log."""

from __future__ import annotations

from pathlib import Path

from bgm_deploy.serve.server import failure_reason


def test_an_older_crash_in_the_log_is_not_named(tmp_path: Path) -> None:
    log = tmp_path / "tritonserver.log"
    log.write_text("I1206 started\nE1206 12:00:00 old crash: failed to bind\n")
    offset = log.stat().st_size  # where the restarted server began appending
    assert "old crash" in failure_reason(log, 0)
    assert failure_reason(log, offset) == "the server printed nothing"
    with open(log, "a") as handle:
        handle.write("I1206 restarted\nE1206 12:01:00 new crash: model failed\n")
    reason = failure_reason(log, offset)
    assert "new crash" in reason and "old crash" not in reason and str(log) in reason


def test_no_log_and_no_telling_line(tmp_path: Path) -> None:
    assert failure_reason(tmp_path / "missing.log") == "the server printed nothing"
    assert failure_reason(None) == "the server printed nothing"
    quiet = tmp_path / "quiet.log"
    quiet.write_text("I1206 all fine\n")
    assert failure_reason(quiet) == f"see the server log {quiet}"
