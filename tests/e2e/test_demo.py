"""``rlhf-loop demo`` end to end, as a user runs it (a short loop: two rounds of realistic traffic): the
embedded broker, the API, the aggregator and a Celery worker start as child processes; the
negative-feedback rate falls after one retrain; a report and a plot are written; the same seed gives
the same table; afterwards no process of the run is left, also after Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rlhf_loop.demo.config import DemoConfig
from tests.conftest import REDIS_URL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _env(root: Path, demo_model_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RLHF_DATA_DIR": str(root),
        "RLHF_MODEL__DEMO_DIR": str(demo_model_dir),
        "RLHF_REDIS__URL": REDIS_URL,
    }


def _left_behind(root: Path) -> list[str]:
    """Processes (any depth) started for this run: their RLHF_DATA_DIR is the run's or one below it."""
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.environ().get("RLHF_DATA_DIR", "").startswith(str(root)) and proc.pid != os.getpid():
                found.append(f"{proc.pid} {proc.info['name']}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


# The demo's own round size. With 200 users (77 ratings, 15 pairs) a retrain sits at the gate's edge
# (docs/training.md, "The demo at 200 users"): the short demo runs the rounds a user runs.
USERS = DemoConfig().users


def _demo(root: Path, demo_model_dir: Path) -> subprocess.CompletedProcess:
    """Run the demo; on a timeout stop it and every process of its run (API, worker, ...): a worker left
    behind would take the next run's training tasks from the shared Redis."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf_loop", "demo", "--rounds", "2", "--users", str(USERS)],
        env=_env(root, demo_model_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except BaseException:  # our timeout or pytest-timeout's: nothing of this run may outlive the test
        proc.send_signal(signal.SIGINT)  # the demo's Ctrl-C path stops its children
        try:
            proc.wait(timeout=30)
        finally:
            proc.kill()
            for left in _left_behind(root):
                os.kill(int(left.split()[0]), signal.SIGKILL)
        raise
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _table(root: Path) -> list[str]:
    """The round table of the run's markdown report."""
    return [line for line in (root / "reports" / "demo-seed7.md").read_text().splitlines() if line.startswith("|")]


# Two whole demo runs, and the first test of the session to ask for the demo model pays for building it in
# its setup (which pytest-timeout counts): twice the suite's default limit.
@pytest.mark.timeout(1200)
@pytest.mark.usefixtures("redis_url")
def test_a_short_demo_lowers_the_negative_feedback_rate_and_leaves_nothing_running(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    out = _demo(tmp_path, demo_model_dir)
    rounds = json.loads((tmp_path / "reports" / "demo-seed7.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[0]["gate"] == "passed" and rounds[0]["rm_auc"] > 0.6, rounds  # thumbs AUC: unique prompts, few pairs
    assert rounds[0]["adapter"] == "base" and rounds[1]["adapter"].startswith("ad-")
    assert rounds[1]["negative_rate"] < rounds[0]["negative_rate"], rounds
    assert rounds[0]["ratings"] < 0.6 * USERS  # realistic traffic: about a third of the users rate
    assert rounds[0]["ratings_used_share"] >= 0.95
    assert (tmp_path / "reports" / "demo-seed7.png").stat().st_size > 1000
    assert rounds[1]["served_by"] == "retrain 0" and len(_table(tmp_path)) == 4  # header, rule, 2 rounds
    assert "wall time" in out.stdout and "report" in out.stdout
    assert not _left_behind(tmp_path)

    _demo(tmp_path / "again", demo_model_dir)  # same seed, fresh state
    assert _table(tmp_path / "again") == _table(tmp_path)
    assert not _left_behind(tmp_path)


@pytest.mark.usefixtures("redis_url")
def test_ctrl_c_stops_every_child_process(tmp_path: Path, demo_model_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf_loop", "demo", "--rounds", "2", "--users", "200"],
        env=_env(tmp_path, demo_model_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    api_log = tmp_path / "demo" / "seed-7" / "api.log"
    deadline = time.monotonic() + 300
    while not (api_log.exists() and "startup complete" in api_log.read_text(errors="replace")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-3000:]
        time.sleep(0.5)
    assert len(_left_behind(tmp_path)) >= 4  # broker, API, aggregator, worker (and the worker's pool)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, output[-3000:]
    assert "every child process was stopped" in output
    assert not _left_behind(tmp_path)
