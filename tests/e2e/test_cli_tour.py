"""The five-minute tour with the `clara` command alone, against a running API and worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from matplotlib import image

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "e2e-admin-password-long-enough"
CLARA = str(Path(sys.executable).with_name("clara"))


def clara(stack, home: Path, *args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would, with its own config directory."""
    env = {**os.environ, "CLARA_URL": stack.url, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    return subprocess.run([CLARA, *args], input=stdin, capture_output=True, text=True, env=env, cwd=home,
                          timeout=timeout)


def test_login_submit_watch_download_and_plot(stack, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    login = clara(stack, home, "login", "--username", "admin", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    assert login.returncode == 0, login.stderr
    submitted = clara(stack, home, "jobs", "submit", str(ROOT / "configs" / "lora-tiny.yaml"),
                      "--set", "hyperparameters.max_steps=12", "--set", "hyperparameters.save_steps=6", "--watch")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "completed" in submitted.stdout and "Traceback" not in submitted.stderr
    job_id = next(word for word in submitted.stdout.split() if word.count("-") == 4)

    downloaded = clara(stack, home, "jobs", "download", job_id)
    assert downloaded.returncode == 0, downloaded.stderr
    archive = home / f"adapter-{job_id}.tar.gz"
    listing = subprocess.run(["tar", "tzf", str(archive)], capture_output=True, text=True, check=True).stdout
    assert f"{job_id}/adapter_model.safetensors" in listing

    plotted = clara(stack, home, "jobs", "plot", job_id)
    assert plotted.returncode == 0, plotted.stderr
    pixels = image.imread(home / f"loss-{job_id}.png")
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100

    watched = clara(stack, home, "jobs", "watch", job_id)
    assert watched.returncode == 0 and "completed" in watched.stdout


def test_flower_answers_401_without_credentials(stack) -> None:
    port = free_port()
    flower = subprocess.Popen(
        [str(Path(sys.executable).with_name("celery")), "-A", "tasks", "flower", f"--port={port}",
         "--address=127.0.0.1", "--basic-auth=ops:flower-password-long"],
        cwd=ROOT, env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                anonymous = requests.get(url, timeout=5)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or flower.poll() is not None:
                    pytest.fail("Flower did not start")
                time.sleep(0.5)
        assert anonymous.status_code == 401
        assert requests.get(url, auth=("ops", "wrong"), timeout=5).status_code == 401
        assert requests.get(url, auth=("ops", "flower-password-long"), timeout=5).status_code == 200
    finally:
        flower.terminate()
        flower.wait(timeout=30)
