"""Jupyter first: the README's JupyterLab command serves the "Python 3 (promu)" kernel, a
notebook runs top to bottom in a kernel that server started (bars as widgets, no warning
block, no carriage return), and papermill reads every notebook's parameters cell."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from worlds import toy_cfg, world

from promu_lib import progress
from promu_lib.config import save_config
from promu_lib.data.toyworld import build_toy_world
from promu_lib.paths import project_root

NOTEBOOKS = sorted((project_root() / "notebooks").glob("*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"


# -- papermill reads every parameters cell ------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_parses_every_parameters_line(path, caplog):
    """papermill warns "Unable to parse line N" on a line it cannot read (two ``=`` in it)."""
    from papermill.translators import PythonTranslator

    (cell,) = [c for c in nbformat.read(str(path), 4).cells if "parameters" in c.metadata.get("tags", [])]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="papermill"):
        found = PythonTranslator.inspect(cell)
    assert [p.name for p in found] == [
        line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line
    ]
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]


# -- the progress policy in a kernel ------------------------------------------------------------


def test_a_kernel_with_a_frontend_draws_widget_bars_and_logs_on_stdout(monkeypatch):
    from tqdm.auto import tqdm as auto
    from tqdm.std import tqdm as text

    monkeypatch.setattr(progress, "_in_kernel", lambda: True)
    assert progress.bar_class() is auto and progress.log_stream() is sys.stdout
    monkeypatch.setattr(progress, "_in_kernel", lambda: False)
    assert progress.bar_class() is text and progress.log_stream() is sys.stderr
    monkeypatch.setattr(
        progress, "_parent_argv", lambda: ["/v/bin/python", "-m", "promu_lib.pipeline"]
    )
    assert progress.under_batch_executor()  # ./run_all.sh's kernels print lines, not bars


# -- a kernel started by the JupyterLab server ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}{path}", data=data, method="POST" if data else "GET")
    req.add_header("Authorization", f"token {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def lab(tmp_path):
    """``.venv/bin/jupyter lab`` (the README command) on a free local port; yields its URL,
    token and runtime directory (where it writes its kernels' connection files)."""
    port, token = _free_port(), secrets.token_hex(16)
    runtime = tmp_path / "runtime"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
    env.pop("PROMU_PROGRESS", None)
    cmd = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={project_root()}"]  # fmt: skip
    cmd += ["--allow-root"] if os.geteuid() == 0 else []  # CI runs as root
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                _api(base, token, "/api/status")
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "lab.log").read_text()
                time.sleep(0.5)
        yield base, token, runtime
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _run_cells(kc, cells: list[str], timeout: float) -> list[list[dict]]:
    """Each cell's iopub messages (stream, display_data, execute_result, error)."""
    per_cell = []
    for source in cells:
        msgs: list[dict] = []

        def keep(msg, msgs=msgs):
            if msg["msg_type"] in ("stream", "display_data", "execute_result", "error"):
                msgs.append({"type": msg["msg_type"], **msg["content"]})

        reply = kc.execute_interactive(source, timeout=timeout, output_hook=keep)
        said = "".join(m.get("text", "") for m in msgs if m["type"] == "stream")[-3000:]
        errors = [m.get("evalue") for m in msgs if m["type"] == "error"]
        assert reply["content"]["status"] == "ok", f"{source[:200]}\n{said}\n{errors}"
        per_cell.append(msgs)
    return per_cell


@pytest.mark.slow
@pytest.mark.notebook
def test_table1_runs_top_to_bottom_in_a_kernel_the_lab_server_started(lab, tmp_path):
    """The user's path: JupyterLab, kernel "Python 3 (promu)", notebooks/04_table1.ipynb run
    cell by cell; it trains what it misses (a micro world here) and shows the table."""
    from jupyter_client import BlockingKernelClient

    base, token, runtime = lab
    specs = _api(base, token, "/api/kernelspecs")["kernelspecs"]
    assert specs["python3"]["spec"]["display_name"] == "Python 3 (promu)"
    cfg = toy_cfg(tmp_path, world(twitter2015=(8, 3, 4)), **{
        "run.progress": True, "run.figures_dir": str(tmp_path / "figures"),
        "pretrain.steps": 4, "pretrain.batch_size": 4, "pretrain.log_every": 2,
        "mining.teacher_steps": 2, "finetune.epochs": 1,
    })  # fmt: skip
    config_file = save_config(cfg, tmp_path / "config.yaml")
    build_toy_world(cfg, progress=False)  # what stage 00 (or ./run_all.sh) made before
    kernel = _api(base, token, "/api/kernels", {"name": "python3"})
    kc = BlockingKernelClient(connection_file=str(runtime / f"kernel-{kernel['id']}.json"))
    kc.load_connection_file()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        nb = nbformat.read(str(project_root() / "notebooks" / "04_table1.ipynb"), 4)
        cells = [c.source for c in nb.cells if c.cell_type == "code"]
        ours = f"config_file = {str(config_file)!r}\ndatasets = ['twitter2015']"
        bar = "from promu_lib.progress import iterate\nn = sum(iterate(range(3), desc='bar'))"
        outputs = _run_cells(kc, [cells[0], ours, *cells[1:], bar], timeout=900)
    finally:
        kc.stop_channels()
    streams = [m for cell in outputs for m in cell if m["type"] == "stream"]
    stderr = "".join(m["text"] for m in streams if m["name"] == "stderr")
    assert "Warning" not in stderr and "IProgress" not in stderr, stderr[:2000]
    assert not any("\r" in m["text"] for m in streams)  # bars are widgets, never text bars
    shown = [m for cell in outputs for m in cell if m["type"] in ("display_data", "execute_result")]
    assert any(
        "text/html" in m["data"] and "twitter2015 F1" in m["data"]["text/html"] for m in shown
    )
    assert "promised outputs exist" in "".join(
        m["text"] for m in outputs[-2] if m["type"] == "stream"
    )
    assert "progress: bars" in "".join(m["text"] for m in outputs[2] if m["type"] == "stream")
    assert any(WIDGET in m["data"] for m in outputs[-1] if m["type"] == "display_data")
    assert (tmp_path / "figures" / "table1.csv").is_file()
