"""The official SAM 3's stand-ins (tests/golden/make_sam3_official.py) stay with the official
package: after it is imported, Ray's init still finds the real psutil and torch still finds no
triton. Run in a fresh interpreter, since in this one ray may already be imported (it puts the
real psutil on sys.path, which hides the leak) or triton's absence already cached by torch. The
CI run that imported the official package before Ray failed 72 Ray tests on the psutil stand-in
and torch.compile on the triton one."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent("""
    import importlib.util, sys
    triton_before = importlib.util.find_spec("triton")
    from tests.golden.make_sam3_official import official
    official("sam3.model_builder")   # imports the video model's triton kernels and psutil
    assert "sam3.model.edt" in sys.modules, "the official video modules were not imported"
    import ray  # its thirdparty_files hold the real psutil
    import psutil
    assert getattr(psutil, "__file__", None), f"psutil is a stand-in: {psutil!r}"
    psutil.Process().parents()   # what ray.init calls in its uv hook
    if triton_before is None:
        assert importlib.util.find_spec("triton") is None, "torch would take the stand-in triton"
        from torch.utils._triton import has_triton_package
        assert not has_triton_package()
    print("ok")
""")


def test_the_official_packages_stand_ins_do_not_leak():
    if importlib.util.find_spec("sam3") is None:  # pragma: no cover - only without the package
        pytest.skip("official sam3 not installed")
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
