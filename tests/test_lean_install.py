"""The PEFT method alone needs only torch + peft + transformers (the `pip install .` without extras):
the README quickstart runs with every optional dependency made unimportable."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ["diffusers", "gradio", "datasets", "cv2", "tensorboard", "skimage", "sklearn", "matplotlib", "scipy"]

BLOCKER = f"""
import runpy, sys

# A None entry in sys.modules makes `import x` fail and importlib.util.find_spec('x') return None,
# which is how a package that is not installed looks to transformers' and peft's availability checks.
for name in {OPTIONAL!r}:
    sys.modules[name] = None
import loca_diffusion
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def test_quickstart_runs_without_optional_dependencies(run_quickstart):
    run_quickstart("-c", BLOCKER)


def test_core_dependencies_are_lean():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {dep.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip() for dep in project["dependencies"]}
    assert not core & {"diffusers", "gradio", "datasets", "opencv-python-headless", "tensorboard"}, core
    extras = project["optional-dependencies"]
    assert {"diffusers", "train", "app", "all"} <= set(extras)
