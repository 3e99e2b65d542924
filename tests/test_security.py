"""Nothing in a config, a model file or a results folder can execute code.

Configs are YAML read with safe_load, model files are parsed by our own readers or protobuf, and
results are JSON and numpy arrays loaded without pickle. This test keeps it so: it parses every
Python file of the project (and the notebooks' code cells) and fails on any construct that can
run code from data (eval/exec, pickle and friends, unsafe YAML, np.load with pickles, torch.load
without weights_only, a shell), naming the file and line. A real need goes into ALLOWED with why.
"""
from __future__ import annotations

import ast
import json
from typing import Iterator, List, Tuple

import pytest
import yaml

from conftest import ROOT

SKIP_DIRS = {".venv", ".venv-caffe", ".cache", ".git", "__pycache__", ".hypothesis", ".pytest_cache", "results",
             ".device", ".whl"}
CODE_FROM_DATA_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "joblib", "cloudpickle"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader"}

# (relative path, rule) -> why it is acceptable. Empty: nothing needs an exception today.
ALLOWED: dict = {}


def sources() -> Iterator[Tuple[str, str]]:
    """(relative path, Python source) for every project file, notebook cells included."""
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS for part in rel.parts) or not path.is_file():
            continue
        if path.suffix == ".py":
            yield str(rel), path.read_text()
        elif path.suffix == ".ipynb":
            cells = json.loads(path.read_text()).get("cells", [])
            code = "\n".join("".join(c.get("source", [])) for c in cells if c.get("cell_type") == "code")
            yield str(rel), "\n".join(ln for ln in code.splitlines() if not ln.lstrip().startswith(("%", "!")))


def _name(node: ast.AST) -> str:
    """'np.load' for np.load(...), 'eval' for eval(...)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def findings(source: str) -> List[Tuple[int, str]]:
    """(line, rule) for each construct that could execute code coming from data."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for m in mods:
                if m.split(".")[0] in CODE_FROM_DATA_MODULES:
                    out.append((node.lineno, f"import {m}"))
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        last = name.rsplit(".", 1)[-1]
        if name in ("eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"):
            out.append((node.lineno, f"{name}()"))
        if name in ("os.system", "os.popen") or name.startswith(("os.exec", "os.spawn")):
            out.append((node.lineno, f"{name}()"))
        if _is_true(_kw(node, "shell")):
            out.append((node.lineno, "shell=True"))
        if _is_true(_kw(node, "allow_pickle")):
            out.append((node.lineno, "allow_pickle=True"))
        if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            out.append((node.lineno, f"{name}()"))
        if name in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _name(loader).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                out.append((node.lineno, f"{name}() without a safe Loader"))
        if name == "torch.load" and not _is_true(_kw(node, "weights_only")):
            out.append((node.lineno, "torch.load() without weights_only=True"))
        if last in ("read_pickle", "from_pickle"):
            out.append((node.lineno, f"{name}()"))
    return out


def test_no_code_from_data_anywhere():
    problems = []
    files = list(sources())
    assert len(files) > 30  # the walk found the project
    for rel, source in files:
        for line, rule in findings(source):
            if (rel, rule) not in ALLOWED:
                problems.append(f"{rel}:{line}: {rule}")
    assert not problems, "constructs that can run code from data:\n" + "\n".join(problems)


@pytest.mark.parametrize("snippet, rule", [
    ("eval(text)", "eval()"),
    ("import pickle", "import pickle"),
    ("from joblib import load", "import joblib"),
    ("subprocess.run(cmd, shell=True)", "shell=True"),
    ("os.system('ls')", "os.system()"),
    ("np.load(p, allow_pickle=True)", "allow_pickle=True"),
    ("yaml.load(text)", "yaml.load() without a safe Loader"),
    ("yaml.load(text, Loader=yaml.FullLoader)", "yaml.load() without a safe Loader"),
    ("yaml.unsafe_load(text)", "yaml.unsafe_load()"),
    ("torch.load(p)", "torch.load() without weights_only=True"),
    ("pd.read_pickle(p)", "pd.read_pickle()"),
])
def test_the_scanner_catches_each_construct(snippet, rule):
    assert rule in [r for _, r in findings(snippet)]


@pytest.mark.parametrize("snippet", [
    "yaml.safe_load(text)", "yaml.load(text, Loader=yaml.SafeLoader)", "ast.literal_eval(s)",
    "module.eval()", "subprocess.run([python, '-m', 'x'])", "np.load(p, allow_pickle=False)",
    "torch.load(p, weights_only=True)", "torch.compile(m)",
])
def test_the_scanner_allows_safe_equivalents(snippet):
    assert findings(snippet) == []


def test_yaml_tags_cannot_build_objects(tmp_path):
    """Behaviour, not only source: python-object tags in a config are refused by the loader."""
    from retinabench.config import load_scenario
    from retinabench.errors import ConfigError
    marker = tmp_path / "pwned"
    for tag in ("!!python/object/apply:os.system", "!!python/object/new:os.system", "!!python/name:os.system"):
        p = tmp_path / "c.yaml"
        p.write_text(f"model: {tag} ['touch {marker}']\ninput: {{mode: native}}\nbackends: [empty]\n")
        with pytest.raises(ConfigError):
            load_scenario(p)
    assert not marker.exists()
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load("!!python/object/apply:os.system ['true']")


def test_mxnet_attributes_are_literals_not_code(tmp_path, mnet25_dir):
    """A symbol attribute holding code is rejected by literal_eval, never run."""
    from retinabench.errors import ModelError
    from retinabench.graph.mxnet_import import load_mxnet
    for f in mnet25_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    sym = json.loads((tmp_path / "mnet.25-symbol.json").read_text())
    marker = tmp_path / "pwned"
    conv = next(n for n in sym["nodes"] if n["op"] == "Convolution")
    conv["attrs"]["kernel"] = f"__import__('pathlib').Path('{marker}').touch()"
    (tmp_path / "mnet.25-symbol.json").write_text(json.dumps(sym))
    with pytest.raises(ModelError, match="malformed"):
        load_mxnet(tmp_path / "mnet.25-symbol.json")
    assert not marker.exists()
