"""The edge SDK as a device maker gets it: `cmake --install` of clients/edge built on its own (the
edge/native_build fixture) into a temporary prefix; the installed header stands alone; the
installed examples build with pkg-config alone, outside cairn's tree, against the shared library
(the installed Makefile) and against the static one; both run the edge scenario (edge_harness.py)
against a real cairnd on loopback — one with libcurl's transport, one with the plain-socket one.
Last, the SDK built without libcurl: nothing of curl in it, and the example works with the socket
transport alone.
"""
import os
import re
import shutil
import subprocess
import tempfile

import edge_harness as eh
from harness import run_tests

NATIVE = os.path.join(eh.build_dir(), "edge-native")
_state = {}


def install(build):
    """cmake --install of an SDK build into a fresh temporary prefix."""
    tmp = tempfile.mkdtemp(prefix="cairn-edge-prefix-")
    rc, out = eh.run(["cmake", "--install", build, "--prefix", tmp], timeout=120)
    assert rc == 0, out
    return tmp


def prefix():
    """The native SDK, installed once per run."""
    if "prefix" not in _state:
        _state["prefix"] = install(NATIVE)
    return _state["prefix"]


def pkg_env(p=None):
    """Only the installed package on pkg-config's path; the rest of the environment unchanged."""
    e = dict(os.environ)
    e["PKG_CONFIG_PATH"] = os.path.join(p or prefix(), "lib", "pkgconfig")
    return e


def examples_copy(p=None):
    """The installed examples, copied to a directory outside cairn's tree."""
    d = tempfile.mkdtemp(prefix="cairn-edge-example-")
    src = os.path.join(p or prefix(), "share", "cairn-edge", "examples")
    for f in os.listdir(src):
        shutil.copy(os.path.join(src, f), d)
    return d


def test_install_layout():
    p = prefix()
    for f in ("include/cairn_edge.h", "lib/libcairn_edge.a", "lib/libcairn_edge.so",
              "lib/libcairn_edge.so.0", "lib/pkgconfig/cairn-edge.pc",
              "share/cairn-edge/examples/example.c", "share/cairn-edge/examples/Makefile",
              "share/cairn-edge/examples/transport_socket.c"):
        assert os.path.exists(os.path.join(p, f)), f"not installed: {f}"
    # The soname carries the major version, the file the full one.
    rc, out = eh.run(["objdump", "-p", os.path.join(p, "lib", "libcairn_edge.so")])
    assert re.search(r"SONAME\s+libcairn_edge\.so\.0$", out, re.M), out
    # Relocatable: pkg-config finds the prefix from the .pc file's own place.
    rc, out = eh.run(["pkg-config", "--variable=libdir", "cairn-edge"], env=pkg_env())
    libdir = os.path.realpath(out.strip())
    assert rc == 0 and libdir == os.path.realpath(os.path.join(p, "lib")), out
    rc, out = eh.run(["pkg-config", "--modversion", "cairn-edge"], env=pkg_env())
    assert rc == 0 and re.fullmatch(r"\d+\.\d+\.\d+\n", out), out


def test_installed_header_stands_alone():
    hdr = os.path.join(prefix(), "include", "cairn_edge.h")
    with open(hdr) as f:
        text = f.read()
    includes = re.findall(r"^\s*#\s*include\s*(\S+)", text, re.M)
    assert includes and all(i.startswith("<") for i in includes), includes
    assert set(includes) <= {"<stddef.h>", "<stdint.h>"}, includes
    # It compiles alone, in strict C99 and C11, and in C++.
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "h.c")
        with open(src, "w") as f:
            f.write("#include <cairn_edge.h>\nint main(void) {\n"
                    "    cairn_edge_params p = cairn_edge_default_params();\n"
                    "    return p.max_batch > 0 && CAIRN_EDGE_VERSION_MAJOR >= 0 ? 0 : 1;\n}\n")
        for std in ("c99", "c11"):
            rc, out = eh.run(["cc", f"-std={std}", "-Wall", "-Wextra", "-Werror", "-pedantic",
                              "-fsyntax-only", "-I", os.path.dirname(hdr), src], cwd=d)
            assert rc == 0, f"-std={std}: {out}"
        cpp = os.path.join(d, "h.cpp")
        shutil.copy(src, cpp)
        rc, out = eh.run(["c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                          "-I", os.path.dirname(hdr), cpp], cwd=d)
        assert rc == 0, f"C++: {out}"


def test_shared_example_from_pkg_config_runs_against_cairnd():
    d = examples_copy()
    # The installed Makefile: cc example.c transport_socket.c $(pkg-config --cflags --libs ...).
    rc, out = eh.run(["make", "-C", d], env=pkg_env(), timeout=120)
    print(out)
    assert rc == 0, out
    exe = os.path.join(d, "cairn_edge_example")
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(prefix(), "lib"))
    rc, out = eh.run(["ldd", exe], env=env)
    assert os.path.join(prefix(), "lib", "libcairn_edge.so.0") in out, out
    eh.scenario([exe], "installed .so, curl transport", env=env)


def test_static_example_runs_against_cairnd_with_the_socket_transport():
    d = examples_copy()
    e = pkg_env()
    cflags = subprocess.check_output(["pkg-config", "--cflags", "cairn-edge"], env=e).split()
    libdir = subprocess.check_output(["pkg-config", "--variable=libdir", "cairn-edge"],
                                     env=e).decode().strip()
    deps = subprocess.check_output(["pkg-config", "--libs", "libcrypto", "libprotobuf-c",
                                    "libcurl"], env=e).split()
    exe = os.path.join(d, "example_static")
    rc, out = eh.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "example.c",
                      "transport_socket.c", *[c.decode() for c in cflags],
                      os.path.join(libdir, "libcairn_edge.a"), *[x.decode() for x in deps],
                      "-pthread", "-lm", "-Wl,--gc-sections", "-o", exe], cwd=d, timeout=120)
    assert rc == 0, out
    rc, out = eh.run(["ldd", exe])
    assert "libcairn_edge" not in out, out
    eh.scenario([exe], "installed .a, socket transport", socket=True)


def test_sdk_without_libcurl():
    build = os.path.join(eh.build_dir(), "edge-nocurl")
    rc, out = eh.run(["cmake", f"-DBIN={build}", "-DOPTIONS=-DCAIRN_EDGE_CURL=OFF",
                      "-P", os.path.join(eh.TOP, "clients", "edge", "build_sdk.cmake")],
                     timeout=600)
    assert rc == 0, out
    p = install(build)
    rc, out = eh.run(["pkg-config", "--print-requires-private", "cairn-edge"], env=pkg_env(p))
    assert rc == 0 and "libcurl" not in out and "libcrypto" in out, out
    lib = os.path.join(p, "lib", "libcairn_edge.so")
    rc, out = eh.run(["ldd", lib])
    assert rc == 0 and "libcurl" not in out, out
    d = examples_copy(p)
    rc, out = eh.run(["make", "-C", d], env=pkg_env(p), timeout=120)
    assert rc == 0, out
    exe = os.path.join(d, "cairn_edge_example")
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(p, "lib"))
    # Asking for the curl transport is a clear error at run time, not a link failure.
    _, pub = eh.make_keys(d)
    rc, out = eh.run([exe, os.path.join(eh.MODELS, "edge.gguf"), pub, "http://127.0.0.1:1", "d",
                      "k"], env=env)
    assert rc == 1 and "built without libcurl" in out, out
    eh.scenario([exe], "installed .so without libcurl, socket transport", socket=True, env=env)


if __name__ == "__main__":
    run_tests(globals())
