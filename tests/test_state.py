"""The state root: system directories and other people's directories are refused."""

from __future__ import annotations

import os

import pytest

from cowlab.base.errors import CowlabError
from cowlab.base.state import MARKER, StateRoot, resolve_root


@pytest.mark.parametrize(
    "p", ["/", "/usr", "/usr/", "/etc", "/tmp", "/var/lib", "/var/lib/docker", "/home", "/root", "/usr/../usr", "//usr"]
)
def test_system_directories_refused(p):
    with pytest.raises(CowlabError, match="system directory"):
        resolve_root(p)


def test_symlink_to_system_directory_refused(tmp_path):
    (tmp_path / "sneaky").symlink_to("/usr")
    with pytest.raises(CowlabError, match="system directory"):
        resolve_root(tmp_path / "sneaky")


def test_home_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    with pytest.raises(CowlabError, match="home directory"):
        resolve_root(tmp_path / "home")


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("COWLAB_ROOT", str(tmp_path / "env"))
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_root() == tmp_path / "env"
    monkeypatch.delenv("COWLAB_ROOT")
    assert str(resolve_root()) == "/var/lib/cowlab"
    monkeypatch.chdir(tmp_path)
    assert resolve_root("rel") == tmp_path / "rel"  # made absolute


def test_ensure_creates_layout(tmp_path):
    st = StateRoot(tmp_path / "a" / "b")
    assert not st.claimed and not st.path.exists()  # nothing until ensure()
    st.ensure()
    assert st.claimed and (st.path / MARKER).is_file()
    for sub in ("journal", "images", "layers", "store", "backings", "tmp"):
        assert (st.path / sub).is_dir()
    st.ensure()  # idempotent on its own root
    assert st.inside(st.path / "x" / "y") and st.inside(st.path)
    assert not st.inside(tmp_path / "a" / "bc") and not st.inside(tmp_path)


def test_empty_dir_is_claimed(tmp_path):
    (tmp_path / "empty").mkdir()
    assert StateRoot(tmp_path / "empty").ensure().claimed


def test_foreign_non_empty_dir_refused_and_untouched(tmp_path):
    d = tmp_path / "precious"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    (d / "sub").mkdir()
    before = sorted(os.listdir(d))
    with pytest.raises(CowlabError, match="non-empty directory that cowlab did not create"):
        StateRoot(d).ensure()
    assert sorted(os.listdir(d)) == before
    assert (d / "thesis.tex").read_text() == "years of work"


def test_file_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(CowlabError, match="not a directory"):
        StateRoot(f).ensure()
    assert f.read_text() == "x"
