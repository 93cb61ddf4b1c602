"""The one registry helper behind methods, passes, targets and backends."""

import pytest

from qdit4sr_export.errors import UserError
from qdit4sr_export.registry import Registry


def test_entries_in_registration_order_and_unknown_names_list_the_valid_ones():
    reg: Registry[int] = Registry("widget")
    reg.add("b", 2)
    reg.add("a", 1)
    assert reg.names() == ["b", "a"] and list(reg) == [2, 1] and reg.get("a") == 1 and "b" in reg
    with pytest.raises(UserError, match=r"unknown widget 'c'; valid: b, a"):
        reg.get("c")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", 3)
    reg.remove("a")
    assert reg.names() == ["b"]


def test_modules_are_imported_on_first_lookup_only(tmp_path, monkeypatch):
    import sys

    reg: Registry[int] = Registry("thing", ("registers_a_thing",))
    (tmp_path / "registers_a_thing.py").write_text("import test_registry_holder\ntest_registry_holder.reg.add('x', 7)\n")
    holder = type(sys)("test_registry_holder")
    holder.reg = reg
    monkeypatch.setitem(sys.modules, "test_registry_holder", holder)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "registers_a_thing" not in sys.modules
    assert reg.names() == ["x"] and "registers_a_thing" in sys.modules
    monkeypatch.delitem(sys.modules, "registers_a_thing")


def test_every_extension_point_uses_it():
    from qdit4sr_export.compiler.targets import TARGETS
    from qdit4sr_export.passes.registry import PASSES
    from qdit4sr_export.quant.methods.registry import METHODS
    from qdit4sr_export.runtime.registry import BACKENDS

    for reg, expected in ((METHODS, "qdit4sr"), (PASSES, "lower-ort"), (TARGETS, "trt"), (BACKENDS, "ort")):
        assert isinstance(reg, Registry) and expected in reg.names()
