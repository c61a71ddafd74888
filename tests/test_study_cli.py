"""experiments.common.sweep.cli: a study run as ``python -m`` or as a file hands Ray importable trials and configs."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import experiments.scaling_k as scaling_k
from experiments.common.sweep import _importable


def _as_main(monkeypatch, **attrs) -> None:
    fake = types.ModuleType("__main__")
    for key, value in attrs.items():
        setattr(fake, key, value)
    monkeypatch.setitem(sys.modules, "__main__", fake)


def _main_twin(name: str) -> type:
    # what ``python -m experiments.scaling_k`` defines: a class of the same name whose module is __main__
    return type(name, (), {"__module__": "__main__"})


def test_a_study_run_with_dash_m_passes_its_importable_config(monkeypatch):
    # Ray pickles __main__'s classes by value; a worker rebuilding the Config then failed on NameError 'Literal'
    _as_main(monkeypatch, __spec__=types.SimpleNamespace(name="experiments.scaling_k"))
    assert _importable(_main_twin("Config")) is scaling_k.Config
    assert _importable(scaling_k.main) is scaling_k.main  # already importable: unchanged


def test_a_study_run_as_a_file_is_found_by_its_path(monkeypatch):
    path = Path(scaling_k.__file__).resolve()
    _as_main(monkeypatch, __spec__=None, __file__=str(path))
    assert _importable(_main_twin("Config")) is scaling_k.Config
    _as_main(monkeypatch, __spec__=None, __file__="/elsewhere/script.py")  # not ours: left as it is
    twin = _main_twin("Config")
    assert _importable(twin) is twin
