"""What the package may depend on: the standard library, numpy, tiktoken, safetensors and requests."""

import ast
import pathlib
import sys
import tomllib

import npgpt

ROOT = pathlib.Path(__file__).resolve().parent.parent
ALLOWED = {"numpy", "tiktoken", "safetensors", "requests", "npgpt"}
OPTIONAL = {("plots.py", "matplotlib"), ("batch_ray.py", "ray")}  # the `plot` and `ray` extras


def imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


def test_runtime_imports_only_the_standard_library_and_four_dependencies():
    files = sorted((ROOT / "npgpt").rglob("*.py"))
    assert files
    for path in files:
        for module in imported_modules(path):
            if (path.name, module) in OPTIONAL:
                continue  # an optional extra, imported only where it is used (below)
            assert module in ALLOWED or module in sys.stdlib_module_names, f"{path.name} imports {module}"


def test_matplotlib_is_imported_only_when_a_figure_is_made():
    tree = ast.parse((ROOT / "npgpt" / "plots.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all("matplotlib" not in ast.dump(n) for n in top_level)
    import subprocess

    code = "import sys, npgpt, npgpt.cli, npgpt.plots; print('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_nothing_is_ever_unpickled():
    for path in (ROOT / "npgpt").rglob("*.py"):
        modules = set(imported_modules(path))
        assert not modules & {"pickle", "marshal", "shelve", "dill", "joblib", "torch"}, path.name
        text = path.read_text()
        assert "allow_pickle" not in text and "np.load(" not in text and "torch.load" not in text, path.name


def test_declared_dependencies_are_exactly_the_four():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = sorted(d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"])
    assert names == ["numpy", "requests", "safetensors", "tiktoken"]
    assert project["version"] == npgpt.__version__


def test_the_package_carries_its_vocabulary():
    assert (ROOT / "npgpt" / "data" / "vocab.bpe.gz").is_file()


def test_ray_is_imported_only_when_the_ray_engine_runs():
    tree = ast.parse((ROOT / "npgpt" / "batch_ray.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all("ray" not in [a.name.split(".")[0] for a in getattr(n, "names", [])] and
               (getattr(n, "module", None) or "").split(".")[0] != "ray" for n in top_level)
    import subprocess

    code = "import sys, npgpt, npgpt.cli, npgpt.batch, npgpt.batch_ray; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
