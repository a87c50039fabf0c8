"""The repository's set-up files agree with each other."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def requirement_specs() -> dict[str, str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    specs = [line.split("#")[0].strip() for line in lines]
    return {_name(s): s.replace(" ", "") for s in specs if s}


def environment_specs() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out = {}
    for dep in env["dependencies"]:
        for spec in dep["pip"] if isinstance(dep, dict) else [dep]:
            out[_name(spec)] = spec.replace(" ", "")
    out.pop("python"), out.pop("pip")
    return out


def test_requirements_and_environment_name_the_same_packages_and_versions():
    req, env = requirement_specs(), environment_specs()
    assert set(req) == set(env), f"only in requirements.txt: {set(req) - set(env)}; only in environment.yml: {set(env) - set(req)}"
    for name in req:  # conda writes `pkg>=1.0` as pip does; compare the version constraints
        assert req[name].split(name, 1)[-1] == env[name].lower().replace("_", "-").split(name, 1)[-1], name


def test_torch_is_pinned_to_one_release_and_installed_first():
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", requirement_specs()["torch"])
    makefile = (ROOT / "Makefile").read_text()
    first_torch = makefile.index("^torch==")
    assert first_torch < makefile.index("-r requirements.txt"), "torch must be installed before the rest"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make run" in (ROOT / "README.md").read_text()
    assert re.search(r"^\s*make test\b", (ROOT / ".ci" / "run").read_text(), re.M)


def test_make_test_keeps_the_notebooks_runs_out_of_runs():
    """nbval runs the notebooks with their defaults; their runs must not land among the user's."""
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert re.search(r"LMKIT_RUNS_DIR=\S+ \$\(PY\) -m pytest", recipe), recipe
    assert 'rm -rf "$$runs"' in recipe


def test_every_parameters_line_is_read_by_papermill():
    """papermill silently skips a parameter line it cannot parse (e.g. '=' in the comment): such a
    parameter could not be set from the command line, the pipeline or a sweep."""
    import ast

    import nbformat
    import papermill

    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cell = next(c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
        assigned = {t.target.id if isinstance(t, ast.AnnAssign) else t.targets[0].id
                    for t in ast.parse(cell.source).body if isinstance(t, ast.Assign | ast.AnnAssign)}
        assert assigned == set(papermill.inspect_notebook(str(nb))), nb.name


def test_make_lab_starts_kernels_on_encrypted_sockets_as_the_browser_test_does():
    """ipykernel warns about every kernel on unencrypted TCP; JupyterLab provisions CurveZMQ keys when
    told to (tests/test_browser.py starts it the same way and checks that no warning comes)."""
    recipe = re.search(r"^lab:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "--MappingKernelManager.transport_encryption=" in recipe and "zmq.has('curve')" in recipe
    browser_test = (ROOT / "tests" / "test_browser.py").read_text()
    assert '"--MappingKernelManager.transport_encryption=auto"' in browser_test
