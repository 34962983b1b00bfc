"""rklu.environment: the versions a results file records are the installed ones."""
import platform
from importlib import metadata

from rklu import environment


def test_versions_are_the_installed_ones():
    versions = environment.software_versions()
    assert set(versions) == {*environment.PACKAGES, "python", "platform", "machine"}
    for name in ("torch", "transformers", "tokenizers", "accelerate", "datasets", "numpy"):
        assert versions[name] == metadata.version(name), name
    assert versions["python"] == platform.python_version()


def test_missing_package_is_none_and_named_in_the_line(monkeypatch):
    monkeypatch.setattr(environment, "PACKAGES", ("torch", "surely-not-installed-pkg"))
    versions = environment.software_versions()
    assert versions["surely-not-installed-pkg"] is None
    line = environment.versions_line(versions)
    assert line.startswith(f"torch {metadata.version('torch')}, surely-not-installed-pkg not installed; Python ")
