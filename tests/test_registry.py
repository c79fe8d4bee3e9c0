"""Registration through the hooks: built-ins, third-party entry points, isolation and blocking."""

from __future__ import annotations

import types

import pytest

from losslab.core import hookimpl
from losslab.core.plugin.manager import PluginError, load_catalog
from losslab.core.plugin.registry import KINDS, Registry, RegistryError


class FakeDist:
    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint: a name, a distribution and a load()."""

    def __init__(self, name: str, load, dist: str = "fake-dist", version: str = "1.2.3") -> None:
        self.name, self._load, self.dist = name, load, FakeDist(dist, version)

    def load(self):
        return self._load()


def _plugin_with_loss(loss_name: str) -> types.SimpleNamespace:
    from losslab.plugins.losses.regression import L1Loss

    @hookimpl
    def lab_register_losses(registry):
        registry.add(loss_name, L1Loss, summary="a test loss", task="depth", input_kind="depth")

    return types.SimpleNamespace(lab_register_losses=lab_register_losses)


def _broken_import():
    raise ImportError("No module named 'missing_dependency'")


def test_builtins_cover_every_kind_through_the_hooks():
    catalog = load_catalog(entry_points=[])
    for kind in KINDS:
        assert len(catalog[kind]) > 0, kind
    bce = catalog.get("loss", "bce")
    assert bce.plugin == "losslab.losses" and bce.distribution == "losslab"
    assert catalog.get("architecture", "unet").plugin == "losslab.architectures"
    assert not catalog.failures


def test_broken_entry_point_is_reported_and_skipped_next_to_a_good_one(capsys):
    good = FakeEntryPoint("good", lambda: _plugin_with_loss("my-l1"), dist="good-dist", version="0.3")
    bad = FakeEntryPoint("bad", _broken_import, dist="bad-dist")
    catalog = load_catalog(entry_points=[bad, good])
    component = catalog.get("loss", "my-l1")
    assert (component.plugin, component.distribution, component.version) == ("good", "good-dist", "0.3")
    assert [f.plugin for f in catalog.failures] == ["bad"]
    assert "missing_dependency" in catalog.failures[0].error
    assert "bad-dist" in capsys.readouterr().err


def test_plugin_whose_hook_raises_loses_only_its_own_components():
    @hookimpl
    def lab_register_losses(registry):
        from losslab.plugins.losses.regression import L1Loss

        registry.add("half-registered", L1Loss, task="depth")
        raise RuntimeError("boom")

    ep = FakeEntryPoint("raiser", lambda: types.SimpleNamespace(lab_register_losses=lab_register_losses))
    catalog = load_catalog(entry_points=[ep])
    assert "half-registered" not in catalog["loss"]
    assert "bce" in catalog["loss"]
    assert "boom" in catalog.failures[0].error


def test_duplicate_name_names_both_plugins():
    ep = FakeEntryPoint("dup", lambda: _plugin_with_loss("bce"), dist="dup-dist")
    catalog = load_catalog(entry_points=[ep])
    assert catalog.get("loss", "bce").plugin == "losslab.losses"
    error = catalog.failures[0].error
    assert "'losslab.losses'" in error and "'dup'" in error and "registered twice" in error


def test_misspelled_hook_fails_loudly():
    @hookimpl
    def lab_register_lossses(registry):  # one 's' too many
        pass

    ep = FakeEntryPoint("typo", lambda: types.SimpleNamespace(lab_register_lossses=lab_register_lossses))
    with pytest.raises(PluginError, match=r"typo.*lab_register_lossses"):
        load_catalog(entry_points=[ep])


def test_disable_plugins_blocks_by_name(monkeypatch):
    monkeypatch.setenv("LAB_DISABLE_PLUGINS", "extra, losslab.metrics")
    ep = FakeEntryPoint("extra", lambda: _plugin_with_loss("extra-loss"))
    catalog = load_catalog(entry_points=[ep])
    assert "extra-loss" not in catalog["loss"]
    assert len(catalog["metric"]) == 0
    assert "bce" in catalog["loss"]


def test_trace_prints_each_hook_call(monkeypatch, capsys):
    monkeypatch.setenv("LAB_TRACE_PLUGINS", "1")
    load_catalog(entry_points=[], fresh=True)
    err = capsys.readouterr().err
    assert "lab_register_losses -> plugin 'losslab.losses'" in err


def test_unknown_name_suggests_nearest():
    registry = Registry("loss")
    registry.add("dice", object, summary="x")
    registry.add("focal", object, summary="y")
    with pytest.raises(RegistryError, match="did you mean 'dice'"):
        registry.get("dise")
    assert registry.names("f*") == ["focal"]
