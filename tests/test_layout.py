"""passes/, plugins/ and runtime/ import as subpackages of qdit4sr_export, installed or from the source tree."""

import subprocess
import sys
from pathlib import Path

import qdit4sr_export

ROOT = Path(__file__).resolve().parent.parent


def test_subpackages_sit_with_the_package():
    import qdit4sr_export.passes.lower_ort as lower_ort
    import qdit4sr_export.plugins as plugins
    import qdit4sr_export.runtime.registry as registry

    for module, folder in ((lower_ort, "passes"), (plugins, "plugins"), (registry, "runtime")):
        path = Path(module.__file__).resolve()
        assert folder in path.parts
        # installed: inside the package; from a checkout: the top-level folder beside it
        package = Path(qdit4sr_export.__file__).resolve().parent
        assert package in path.parents or package.parent in path.parents


def test_python_started_in_the_repository_root_imports_them():
    """The source tree shadows the installed package there; its subpackages must still resolve."""
    code = ("import qdit4sr_export, qdit4sr_export.passes.lower_ort as p, qdit4sr_export.runtime.registry as r; "
            "print(qdit4sr_export.__file__); print(p.__file__); print(r.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    package, passes, runtime = (Path(line) for line in out.stdout.split())
    assert package.resolve() == ROOT / "qdit4sr_export" / "__init__.py"
    assert passes.resolve() == ROOT / "passes" / "lower_ort.py" and runtime.resolve() == ROOT / "runtime" / "registry.py"
