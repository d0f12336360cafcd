"""dhmd's C kernels (dhmd/csrc/*.c): compiled once per machine with the system C compiler, cached,
and loaded with ctypes.

Why C and not a torch extension: the kernels are plain loops over float arrays (no torch or Python
headers), so they build in half a second with any C compiler and need neither ninja nor a
torch-version-matched build; ctypes releases the GIL during a call, so Python threads run them on
every core.

Where: ``$DHMD_KERNEL_DIR``, else ``$XDG_CACHE_HOME/dhmd-pipeline/kernels`` (``~/.cache/...``), or
``<temp folder>/dhmd-kernels-<user>`` when that cannot be written (a read-only home).  A
build's file name is a hash of the source, the compiler's version, the flags and this CPU's model and
instruction-set flags (``-march=native``), so a home directory shared by different machines keeps one
build per kind of CPU, and an edited source is built again.  A build is written to a temporary file
and renamed into place, so processes starting together (ranks of a distributed run) never load a
half-written library.

When there is no compiler, the build fails, or ``DHMD_NATIVE=0``, :func:`library` returns None (the
failure logged once) and callers use their torch / numba path, with the same mathematics.
"""
from __future__ import annotations

import ctypes
import functools
import getpass
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent / "csrc"
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-std=c11",
         "-fPIC", "-shared")
WIDE = "-mprefer-vector-width=512"     # with AVX-512: 30% faster kernels here than gcc's 256-bit default


def kernel_dir() -> Path:
    """Where built kernels are kept."""
    if os.environ.get("DHMD_KERNEL_DIR"):
        return Path(os.environ["DHMD_KERNEL_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "dhmd-pipeline" / "kernels"


def compiler() -> str | None:
    """The C compiler: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH."""
    if os.environ.get("CC"):
        return os.environ["CC"]
    return next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def _cpu() -> str:
    """This CPU's model and instruction-set flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
        return "\n".join(dict.fromkeys(wanted))
    except OSError:
        return platform.processor() or platform.machine()


def flags() -> tuple[str, ...]:
    """The compiler flags for this machine: FLAGS, and WIDE on an x86-64 CPU with AVX-512."""
    wide = platform.machine().lower() in ("x86_64", "amd64") and "avx512f" in _cpu().split()
    return FLAGS + ((WIDE,) if wide else ())


def _build(name: str) -> Path:
    """The shared library of dhmd/csrc/<name>.c, built when missing; raises on failure."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    source = SOURCE_DIR / f"{name}.c"
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256("\0".join([source.read_text(), cc, version, " ".join(flags()), platform.machine(),
                                       _cpu()]).encode()).hexdigest()[:16]
    folders = [kernel_dir()]
    if not os.environ.get("DHMD_KERNEL_DIR"):      # a read-only home: the temp folder, one per user
        folders.append(_private_temp_dir())
    for folder in folders:
        target = folder / f"{name}-{digest}.so"
        if target.exists() and _trusted(folder, folders[0]):
            return target
    error: OSError = OSError(f"no writable folder for the kernel among {', '.join(map(str, folders))}")
    for folder in folders:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _trusted(folder, folders[0]):
                continue
            fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=folder)
        except OSError as exc:
            error = exc
            continue
        os.close(fd)
        return _compile(cc, source, tmp, folder / f"{name}-{digest}.so")
    raise error


def _private_temp_dir() -> Path:
    """``<temp folder>/dhmd-kernels-<uid>``: the fallback for an unwritable cache folder."""
    who = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    return Path(tempfile.gettempdir()) / f"dhmd-kernels-{who}"


def _trusted(folder: Path, chosen: Path) -> bool:
    """The cache folder the user chose is trusted; the shared temp folder only when this user owns the
    folder and nobody else may write to it (else another user could plant a library to be loaded)."""
    if folder == chosen or not hasattr(os, "getuid"):
        return True
    try:
        st = folder.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _compile(cc: str, source: Path, tmp: str, target: Path) -> Path:
    """Compile ``source`` into ``tmp``, then rename it to ``target`` (never a half-written library)."""
    try:
        done = subprocess.run([cc, *flags(), "-o", tmp, str(source), "-lm"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed on {source}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def library(name: str) -> ctypes.CDLL | None:
    """dhmd/csrc/<name>.c loaded with ctypes (built first when needed), or None when it cannot be
    (``DHMD_NATIVE=0``, no compiler, a failed build: logged once); callers fall back to torch."""
    if os.environ.get("DHMD_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        return ctypes.CDLL(str(_build(name)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("dhmd: C kernel %s not available (%s); using the torch path", name, exc)
        return None
