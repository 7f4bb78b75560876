"""pyproject.toml's install: every package of the code is found, and each console script names a real entry."""
import importlib
import tomllib

import pytest

from conftest import REPO_ROOT

find_namespace_packages = pytest.importorskip("setuptools").find_namespace_packages

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_the_install_takes_every_package_of_the_code_and_nothing_else():
    found = set(find_namespace_packages(REPO_ROOT, **PROJECT["tool"]["setuptools"]["packages"]["find"]))
    with_init = {".".join(p.parent.relative_to(REPO_ROOT).parts) for top in ("zo", "tasks")
                 for p in (REPO_ROOT / top).rglob("__init__.py")}
    # a folder under zo/ or tasks/ without __init__.py would be installed as a namespace package: add the file
    assert found == with_init
    for module in PROJECT["tool"]["setuptools"]["py-modules"]:
        assert (REPO_ROOT / f"{module}.py").is_file()


@pytest.mark.parametrize("name", ["zo-fine-tune", "zo-l2l"])
def test_each_console_script_is_the_run_scripts_entry_with_its_exit_codes(name, monkeypatch, capsys):
    module, function = PROJECT["project"]["scripts"][name].split(":")
    entry = getattr(importlib.import_module(module), function)
    monkeypatch.setattr("sys.argv", [name, "--no_such_flag"])
    with pytest.raises(SystemExit) as stop:
        entry()
    assert stop.value.code == 2 and "--no_such_flag" in capsys.readouterr().err
