"""`hyperflexis serve` refuses bad settings with a clear error, before starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--instances", "0"], "'instances'"),
        (["--max-queued", "0"], "'max_queued'"),
        (["--max-request-bytes", "0"], "'max_request_bytes'"),
        (["--metrics-require-key"], "'metrics_require_key': needs an 'api_key'"),
        (["--tpot-margin", "1"], "invalid --tpot-margin 1.0: must be in [0, 1)"),
        (["--prefill-rate-margin", "-0.1"], "invalid --prefill-rate-margin -0.1"),
        (["--model", "/nonexistent/model"], "'--model'"),
        (["--profile", "/nonexistent/profile.json"], "'--profile'"),
        (["/models/a", "--model", "/models/b"], "the model is given twice"),
        (["--chat-template", "no-such-file"], "'--chat-template'"),
        (["--max-num-seqs", "0"], "'max_num_seqs'"),
        (["--prefill", "1"], "P/D needs both"),
        (["--prefill", "0", "--decode", "1"], "at least one of each"),
        (["--instances", "2", "--prefill", "1", "--decode", "1"], "give either --instances"),
        (["--links", "pairs"], "'--links': only for P/D"),
        (["--kv-transport", "shm"], "'--kv-transport': only for P/D"),
        (["--prefill", "1", "--decode", "1", "--links", "ring"], "invalid 'links' 'ring'"),
        (["--prefill", "1", "--decode", "1", "--kv-lease-s", "0"], "kv_lease_s"),
    ],
)
def test_bad_settings_exit_2_with_the_setting_named(
    args: list[str], needle: str, server_model_dir: Path
) -> None:
    if "--model" not in args:
        args = [*args, "--model", str(server_model_dir)]
    done = subprocess.run(
        [sys.executable, "-m", "hyperflexis", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr
    assert "serving on" not in done.stdout


def test_version_prints_and_exits() -> None:
    from hyperflexis import __version__

    for argv in (["--version"], ["serve", "--version"]):
        done = subprocess.run(
            [sys.executable, "-m", "hyperflexis", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0 and done.stdout.strip() == __version__
