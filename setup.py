"""Build script for the optional compiled CPU kernels (``embtable._C``).

All metadata lives in ``pyproject.toml``; this file only declares the C++
extension.  The extension is optional: if it cannot be built (no compiler,
``EMBTABLE_NO_BUILD_EXT=1``), the package still installs and falls back to the
pure-PyTorch kernels with a one-time warning at first use.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup


def _arch_flags() -> list[str]:
    """``-march=native`` (AVX2 on this project's machines): the extension is built on the
    machine that runs it.  ``EMBTABLE_PORTABLE=1`` builds for the baseline ISA instead.
    The compiler may contract a*b+c into FMAs; results still agree with the pure-PyTorch
    reference to 1e-6 (tested)."""
    return [] if os.environ.get("EMBTABLE_PORTABLE") == "1" else ["-march=native"]


def _extension_modules() -> tuple[list, dict]:
    sources = sorted(glob.glob("src/embtable/csrc/*.cpp") + glob.glob("src/embtable/csrc/cpu/*.cpp"))
    if not sources or os.environ.get("EMBTABLE_NO_BUILD_EXT") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:  # torch is not importable in this build environment
        print("embtable: torch not importable at build time; skipping the C++ extension", file=sys.stderr)
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """Build the extension, but never fail the install because of it."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as error:  # noqa: BLE001 - any compiler failure
                print(f"embtable: C++ extension not built ({error}); the pure-PyTorch kernels will be used", file=sys.stderr)

    extension = CppExtension(
        name="embtable._C",
        sources=sources,
        extra_compile_args=["-O3", "-fno-math-errno", "-fopenmp", "-std=c++20", *_arch_flags()],
        extra_link_args=["-fopenmp"],
    )
    # ninja (a dev dependency) builds the translation units in parallel and, for
    # `python setup.py build_ext --inplace`, recompiles only those that changed; without it
    # torch falls back to setuptools' sequential build.
    return [extension], {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
