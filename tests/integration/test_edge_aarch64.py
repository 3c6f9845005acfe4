"""The edge SDK built for aarch64 with cmake/aarch64-linux-gnu.cmake (the edge/aarch64_build
fixture; its unit tests run under qemu in edge/aarch64_unit), its example run under qemu-aarch64
against a real cairnd on loopback: the edge scenario of edge_harness.py (a signed bundle fetched,
verified and applied; tampered ones and a wrong key refused). Under emulation this is a correctness
run, never a timing: the aarch64 build's predictions must match the x86-64 build's.
"""
import os
import shutil
import tempfile

import edge_harness as eh
from harness import BIN, run_tests

AARCH64 = os.path.join(eh.build_dir(), "edge-aarch64")
EXAMPLE = os.path.join(AARCH64, "bin", "cairn_edge_example")


def qemu():
    q = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    assert q, "qemu-aarch64 is not installed (scripts/setup installs qemu-user)"
    return [q]


def test_example_is_an_aarch64_program():
    rc, out = eh.run(["file", "-L", EXAMPLE])
    assert rc == 0 and "ARM aarch64" in out, out
    rc, out = eh.run(["file", "-L", os.path.join(AARCH64, "lib", "libcairn_edge.so")])
    assert rc == 0 and "ARM aarch64" in out, out


def test_scenario_under_qemu():
    eh.scenario(qemu() + [EXAMPLE], "aarch64 under qemu, curl transport")


def test_predictions_match_x86_64():
    """The same 64 images through the x86-64 and the aarch64 builds (no cloud reachable: the
    update fails, the uploads are given up): the same classes, probabilities and entropies to
    within what FMA contraction on aarch64 can change."""
    with tempfile.TemporaryDirectory(prefix="cairn-edge-arm-") as tmp:
        images = os.path.join(tmp, "images.f32")
        eh.write_images(images, 64, first=1000)
        _, pub = eh.make_keys(tmp)
        args = eh.example_args(os.path.join(eh.MODELS, "edge.gguf"), pub, "http://127.0.0.1:1",
                               ("dev-x", "key-x"), images, socket=True)
        outs = []
        for prefix in ([os.path.join(BIN, "cairn_edge_example")], qemu() + [EXAMPLE]):
            rc, out = eh.run(prefix + args, timeout=120)
            print(out)
            assert rc == 0, f"{prefix}: exit {rc}"
            outs.append(eh.predictions(out))
        x86, arm = outs
        assert len(x86) == 8 and len(arm) == 8, (x86, arm)
        for a, b in zip(x86, arm):
            assert a[:2] == b[:2], f"image {a[0]}: class {a[1]} on x86-64, {b[1]} on aarch64"
            assert abs(a[2] - b[2]) <= 0.002 and abs(a[3] - b[3]) <= 0.002, (a, b)


if __name__ == "__main__":
    run_tests(globals())
