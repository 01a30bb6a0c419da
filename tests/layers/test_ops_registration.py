import subprocess
import sys


def test_importing_det3d_registers_the_ops():
    # A fresh interpreter: `import det3d` alone must make torch.ops.det3d.* resolvable.
    code = (
        "import det3d, torch;"
        "print(torch.ops.det3d.nms, torch.ops.det3d.roi_align, torch.ops.det3d._roi_align_backward)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "det3d.nms" in out.stdout and "det3d.roi_align" in out.stdout
