"""`make lab` opens the book in JupyterLab on the venv's kernel, and a chapter runs there, in a real browser, without error.

The server is started by `make lab` itself (LAB_ROOT, LAB_ARGS: see the Makefile), on 127.0.0.1, a free port, no token,
serving a temporary copy of nbs/ (JupyterLab autosaves: the repository's notebooks are never opened) whose chapter has
its stored outputs removed, so every output seen comes from this run. All of Jupyter's state (config, data, runtime,
settings, workspaces, IPython) lives in temporary folders, and the data folder holds a decoy user-level `python3`
kernelspec, preferred over the venv's (JUPYTER_PREFER_ENV_PATH=0): `make lab` must still run the venv's python.
Headless Chromium (tests/browser_support.py) runs all cells through the command palette, as a reader would.
Skips without Chromium or playwright, unless LIPNOTES_BROWSER=required. Screenshot: tests/artifacts/jupyterlab_<chapter>.png.
"""
import json, os, re, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest
from browser_support import chromium_path_or_skip, launch

REPO = Path(__file__).resolve().parent.parent
CHAPTER = "03_frobenius"  # prints, draws a figure, ~34 code cells; ~12 s on 2 cores under nbclient
WAIT_S = 240  # a generous limit for waiting (server start, the whole run), never a timing assertion
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
VENV = Path(sys.prefix)  # `make test` runs pytest with the venv's python: the venv `make lab` must use
VENV_PYTHON = str(VENV / "bin" / "python")  # what `ipykernel install --sys-prefix` writes as the kernel's argv[0]

# The notebook as JupyterLab holds it (nbformat JSON, every cell, rendered or not) and the kernel's status.
NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.content.model || !panel.sessionContext) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return {status: kernel ? kernel.status : null, kernel: kernel ? kernel.name : null,
          path: panel.context.path, nb: panel.content.model.toJSON()};
}"""

# Done when the kernel is idle and every code cell has an execution count, or as soon as an error output shows
# (Run All stops at an error: the cells after it would never get one).
RUN_FINISHED = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.model.toJSON().cells.filter(c => c.cell_type === 'code');
  if (cells.some(c => c.outputs.some(o => o.output_type === 'error'))) return 'error';
  return kernel && kernel.status === 'idle' && cells.every(c => c.execution_count !== null) ? 'done' : false;
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _pids_whose_cmdline_has(text: str) -> dict:
    "{pid: argv} of this machine's processes whose command line contains `text` (Linux /proc)."
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if any(text in a for a in argv):
                found[int(d.name)] = argv
    return found


def _text(output: dict) -> str:
    "An output's text: a stream's, an error's traceback, a bundle's text/plain."
    if output["output_type"] == "stream":
        t = output["text"]
    elif output["output_type"] == "error":
        t = output["traceback"]
    else:
        t = output.get("data", {}).get("text/plain", "")
    return "".join(t) if isinstance(t, list) else t


@pytest.fixture
def lab(tmp_path):
    """JupyterLab started by `make lab` on a copy of nbs/ with the chapter's outputs removed; yields (url, info).
    Stops the server and its kernels afterwards, whatever happened (its log is printed: pytest shows it on failure)."""
    chromium_path_or_skip()  # skip (or fail, LIPNOTES_BROWSER=required) before starting anything
    if sys.prefix == sys.base_prefix:
        pytest.skip("not running in a virtual environment: `make lab` runs the project's venv (run `make test`)")
    if not sys.platform.startswith("linux"):
        pytest.skip("finds the kernel's process through /proc (Linux)")
    root = tmp_path / "book"
    shutil.copytree(REPO / "nbs", root, ignore=shutil.ignore_patterns("_proc", ".ipynb_checkpoints", "__pycache__"))
    source = (REPO / "nbs" / f"{CHAPTER}.ipynb").read_bytes()
    stored = json.loads(source)
    cleared = json.loads(source)
    for cell in cleared["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    (root / f"{CHAPTER}.ipynb").write_text(json.dumps(cleared, indent=1))

    dirs = {k: tmp_path / k.lower() for k in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                                              "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR",
                                              "MPLCONFIGDIR")}
    for d in dirs.values():
        d.mkdir()
    # A user-level `python3` kernelspec that cannot start, ahead of the venv's unless `make lab` puts the venv's first.
    decoy = dirs["JUPYTER_DATA_DIR"] / "kernels" / "python3"
    decoy.mkdir(parents=True)
    (decoy / "kernel.json").write_text(json.dumps({
        "argv": [str(tmp_path / "no-such-python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "decoy user-level python3", "language": "python"}))
    # No news/update prompt over the notebook.
    notes = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "apputils-extension"
    notes.mkdir(parents=True)
    (notes / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))

    env = {k: v for k, v in os.environ.items()
           if k not in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_PLATFORM_DIRS", "MAKEFLAGS", "MFLAGS")}
    env.update({k: str(d) for k, d in dirs.items()}, JUPYTER_PREFER_ENV_PATH="0")
    env.setdefault("OMP_NUM_THREADS", "1")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = (f"--no-browser --ip=127.0.0.1 --port={port} --port-retries=0 --IdentityProvider.token= "
            "--ServerApp.password= --LabApp.expose_app_in_browser=True" + (" --allow-root" if os.geteuid() == 0 else ""))
    # `make lab` as a user runs it; -o: the venv is installed already (pytest runs in it), so never reinstall here.
    cmd = ["make", "-s", "-C", str(REPO), "-o", f"{VENV}/.installed", "lab",
           f"VENV={VENV}", f"LAB_ROOT={root}", f"LAB_ARGS={args}"]
    log_path = tmp_path / "lab.log"
    log = open(log_path, "wb")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    runtime = str(dirs["JUPYTER_RUNTIME_DIR"])

    def log_tail():
        return log_path.read_text(errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"`make lab` exited with {server.returncode} before serving:\n{log_tail()}")
            try:
                _get(f"{url}/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within {WAIT_S} s:\n{log_tail()}")
                time.sleep(0.5)
        yield url, {"root": root, "source": source, "stored": stored, "runtime": runtime, "log_tail": log_tail}
    finally:
        try:  # shut the kernels down through the server, then stop the server (make and jupyter: one process group)
            for s in _get(f"{url}/api/sessions"):
                req = urllib.request.Request(f"{url}/api/sessions/{s['id']}", method="DELETE")
                urllib.request.urlopen(req, timeout=30).close()
        except OSError:
            pass
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            if server.poll() is None:
                try:
                    os.killpg(server.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    server.wait(wait)
                except subprocess.TimeoutExpired:
                    pass
        # A kernel still alive (its own session: the server's signal does not reach it) is ours by its connection file.
        for pid in _pids_whose_cmdline_has(runtime):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        print(f"--- `make lab` log (tail):\n{log_tail()}")


def test_make_lab_runs_a_chapter_on_the_venv_kernel(lab):
    from playwright.sync_api import sync_playwright
    url, info = lab

    # The kernelspec the server offers as python3 is the venv's python (not the decoy, not a bare `python`).
    specs = _get(f"{url}/api/kernelspecs")
    assert specs["default"] == "python3", specs["default"]
    argv0 = specs["kernelspecs"]["python3"]["spec"]["argv"][0]
    assert os.path.abspath(argv0) == VENV_PYTHON, (argv0, VENV_PYTHON)

    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.set_default_timeout(WAIT_S * 1000)
            page.goto(f"{url}/lab/tree/{CHAPTER}.ipynb")
            page.wait_for_function(f"""() => {{ const s = ({NOTEBOOK_STATE})();
                return s && s.path === '{CHAPTER}.ipynb' && s.status === 'idle'; }}""")
            page.locator(".jp-Notebook").first.click()  # the notebook has the focus: the commands act on it
            page.keyboard.press("Control+Shift+C")
            palette = page.locator(".lm-CommandPalette-input")
            palette.fill("Run All Cells")
            page.locator(".lm-CommandPalette-item").filter(
                has=page.locator(".lm-CommandPalette-itemLabel", has_text=re.compile(r"^Run All Cells$"))).first.click()
            outcome = page.wait_for_function(RUN_FINISHED).json_value()
            state = page.evaluate(f"({NOTEBOOK_STATE})()")

            # What the page shows: executed input prompts, rendered outputs, no rendered traceback.
            prompts = page.locator(".jp-InputPrompt").all_inner_texts()
            rendered = page.locator(".jp-OutputArea-output").all_inner_texts()
            stderr_shown = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
            stderr_shown = stderr_shown.all_inner_texts()
            figure = page.locator(".jp-OutputArea-output img").first
            figure.scroll_into_view_if_needed()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"jupyterlab_{CHAPTER}.png"))
        finally:
            browser.close()

    cells = [c for c in state["nb"]["cells"] if c["cell_type"] == "code"]
    errors = [(i, _text(o)[-2000:]) for i, c in enumerate(cells) for o in c["outputs"]
              if o["output_type"] == "error" or (o["output_type"] == "stream" and o["name"] == "stderr"
                                                  and re.search(r"Traceback|\w+Error\b|Exception\b", _text(o)))]
    assert not errors, f"error output(s) in {CHAPTER}:\n{errors}"
    assert outcome == "done", outcome
    assert state["kernel"] == "python3", state["kernel"]
    # Every code cell ran, once each, in order.
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), counts
    # The cells that have outputs in the repository's notebook have them again, and of the same kinds.
    stored = [c for c in info["stored"]["cells"] if c["cell_type"] == "code"]
    assert len(stored) == len(cells)
    with_outputs = [i for i, c in enumerate(stored) if c["outputs"]]
    assert with_outputs, f"{CHAPTER} has no stored outputs to compare with"
    for i in with_outputs:
        kinds = {(o["output_type"], *sorted(o.get("data", {}))) for o in stored[i]["outputs"]}
        got = {(o["output_type"], *sorted(o.get("data", {}))) for o in cells[i]["outputs"]}
        assert kinds <= got, (i, cells[i]["source"][:200], kinds, got)
    assert any("image/png" in o.get("data", {}) for c in cells for o in c["outputs"]), "no figure"
    # And the page rendered them: executed prompts, outputs, the figure, no traceback.
    assert any(re.fullmatch(r"\[\d+\]:", t.strip()) for t in prompts), prompts[:5]
    assert any(t.strip() for t in rendered), "no rendered output"
    assert not [t for t in stderr_shown if re.search(r"Traceback|\w+Error\b", t)], stderr_shown

    # The notebook ran on the venv's python: the kernel process started for its session is the venv's interpreter.
    sessions = [s for s in _get(f"{url}/api/sessions") if s["path"] == f"{CHAPTER}.ipynb"]
    assert len(sessions) == 1, sessions
    kernel = sessions[0]["kernel"]
    assert kernel["name"] == "python3", kernel
    procs = _pids_whose_cmdline_has(f"kernel-{kernel['id']}.json")
    assert len(procs) == 1, procs
    (argv,) = procs.values()
    assert os.path.abspath(argv[0]) == VENV_PYTHON, argv

    # The repository's notebook was never touched (the server served a copy).
    assert (REPO / "nbs" / f"{CHAPTER}.ipynb").read_bytes() == info["source"]
