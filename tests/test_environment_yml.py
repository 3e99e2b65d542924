"""environment.yml (conda, GPU) names the same packages and pins as requirements.txt (pip, CPU/CI)."""
from __future__ import annotations

import re
from typing import Dict

import yaml

from conftest import ROOT

# CPU package -> its GPU build in environment.yml (versions may differ: GPU builds release on their own).
GPU_VARIANTS = {"mxnet": "mxnet-cu112", "onnxruntime": "onnxruntime-gpu",
                "opencv-python-headless": "opencv-python-headless"}
# Only meaningful with a GPU: TensorRT, its CUDA bindings, NVML for GPU utilisation.
GPU_ONLY = {"tensorrt-cu12", "cuda-python", "nvidia-ml-py"}


def _name(spec: str) -> str:
    """PEP 503 normalised distribution name of a requirement line."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", spec.strip(), maxsplit=1)[0]).lower()


def _pins(lines) -> Dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue  # blank, comment, or a pip option such as --extra-index-url
        pins[_name(line)] = line.split("==", 1)[1].strip() if "==" in line else ""
    return pins


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _pip_section(env: dict) -> list:
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip: section"
    return sections[0]


def test_environment_yml_parses_with_python_and_pip():
    env = _environment()
    assert env["name"] and env["channels"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "pip" in conda
    assert "python=3.11" in conda, "the main interpreter matches setup.sh's and CI's Python 3.11"


def test_environment_yml_names_the_packages_of_requirements_txt():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = _pins(_pip_section(_environment()))
    expected = {GPU_VARIANTS.get(name, name) for name in req}
    missing = sorted(expected - set(env))
    extra = sorted(set(env) - expected - GPU_ONLY)
    assert not missing, f"in requirements.txt but not environment.yml: {missing}"
    assert not extra, f"in environment.yml but not requirements.txt (nor a GPU-only extra): {extra}"


def test_shared_packages_have_the_same_pins():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = _pins(_pip_section(_environment()))
    differ = {name: (v, env.get(name)) for name, v in req.items()
              if name not in GPU_VARIANTS or GPU_VARIANTS[name] == name
              if env.get(name) != v}
    assert not differ, f"requirements.txt vs environment.yml pins: {differ}"
    assert all(env[name] for name in env), "every environment.yml pip package is pinned with =="
