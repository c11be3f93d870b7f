"""`serve --backend ray`'s settings: without Ray importable it exits 2 saying how to install it;
a malformed `--ray-resources`, or one without the Ray backend, exits 2 naming the setting. No
cluster is started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _serve(
    args: list[str], model: Path, extra_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    path = [str(ROOT / "src")] if extra_path is None else [str(extra_path), str(ROOT / "src")]
    return subprocess.run(
        [sys.executable, "-m", "hyperflexis", "serve", "--port", "0", "--model", str(model), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
    )


def test_the_ray_backend_without_ray_exits_2_saying_how_to_install_it(
    tmp_path: Path, server_model_dir: Path
) -> None:
    hidden = tmp_path / "no-ray" / "ray"  # a `ray` that fails to import, as when not installed
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    done = _serve(["--backend", "ray"], server_model_dir, hidden.parent)
    assert done.returncode == 2, done.stderr
    assert "pip install 'hyperflexis[ray]'" in done.stderr and "Traceback" not in done.stderr
    assert "serving on" not in done.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--backend", "ray", "--ray-resources", "[1]"], "--ray-resources"),
        (["--backend", "ray", "--ray-resources", "{"], "--ray-resources"),
        (["--ray-resources", '{"decode": {"node2": 1}}'], "'ray_resources': only with the ray"),
        (["--backend", "k8s"], "--backend"),
    ],
)
def test_bad_ray_settings_exit_2_with_the_setting_named(
    args: list[str], needle: str, server_model_dir: Path
) -> None:
    done = _serve(args, server_model_dir)
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr
