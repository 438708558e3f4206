"""Build: one Cython extension (lstm_infer._engine) plus the C kernels in src_c/.

The portable sources get no -m flags. Each per-ISA kernel file is compiled on its own with
exactly the flags of its ISA, and linked into the same extension; the CPU is checked at
import time (src_c/cpu_dispatch.c) before any of that code runs. Never -march=native.
"""

import glob
import os
import platform

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PORTABLE_SOURCES = [
    "src_c/cell_update_generic.c",
    "src_c/cell_update_mixed.c",
    "src_c/kernels_scalar.c",
    "src_c/cpu_dispatch.c",
    "src_c/recurrent_driver.c",
    "src_c/stack_step_rows.c",
    "src_c/step_program.c",
    "src_c/pool_planes.c",
    "src_c/cells_common.c",
    "src_c/cell_layer_norm_lstm.c",
    "src_c/cell_clockwork_rnn.c",
    "src_c/cell_depth_gated_lstm.c",
    "src_c/cell_grid_lstm.c",
    "src_c/cell_attention_decoder.c",
]
X86_ISA_SOURCES = {
    "src_c/kernels_avx2.c": ["-mavx2", "-mfma"],
    "src_c/kernels_avx512.c": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mfma"],
    "src_c/kernels_avx2vnni.c": ["-mavx2", "-mfma", "-mavxvnni"],
    "src_c/kernels_avx512vnni.c": [
        "-mavx512f",
        "-mavx512dq",
        "-mavx512bw",
        "-mavx512vl",
        "-mfma",
        "-mavx512vnni",
    ],
    "src_c/kernels_amx.c": [
        "-mavx512f",
        "-mavx512dq",
        "-mavx512bw",
        "-mavx512vl",
        "-mfma",
        "-mavx512bf16",
        "-mamx-tile",
        "-mamx-bf16",
        "-mamx-int8",
    ],
    "src_c/kernels_avx512bf16.c": [
        "-mavx512f",
        "-mavx512dq",
        "-mavx512bw",
        "-mavx512vl",
        "-mfma",
        "-mavx512vnni",
        "-mavx512bf16",
    ],
}
HEADERS = sorted(glob.glob("src_c/*.h")) + [
    "lstm_infer/_engine_products.pxi",
    "lstm_infer/_engine_step.pxi",
    "lstm_infer/_engine_cells.pxi",
    "lstm_infer/_engine_attention.pxi",
]
COMMON_CFLAGS = ["-O3", "-std=c11", "-fno-math-errno", "-Wall", "-Wno-unused-function"]

IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
# LSTM_INFER_CYTHON_CHECKS=1 turns bounds and wraparound checks back on for debugging.
CHECKS = os.environ.get("LSTM_INFER_CYTHON_CHECKS", "") == "1"


class BuildWithIsaKernels(build_ext):
    """Compile each per-ISA kernel file with its own flags, then link them in."""

    def build_extension(self, ext):
        if IS_X86_64 and ext.name == "lstm_infer._engine":
            objects = []
            for source, flags in X86_ISA_SOURCES.items():
                objects += self.compiler.compile(
                    [source],
                    output_dir=self.build_temp,
                    include_dirs=["src_c"],
                    extra_postargs=COMMON_CFLAGS + flags,
                    depends=HEADERS,
                )
            ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


engine = Extension(
    "lstm_infer._engine",
    sources=["lstm_infer/_engine.pyx", *PORTABLE_SOURCES],
    include_dirs=["src_c", np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    + ([("LI_HAVE_X86_KERNELS", "1")] if IS_X86_64 else []),
    extra_compile_args=COMMON_CFLAGS,
    depends=HEADERS,
)

# The graph ops' matrix products (transposes, strides, batches) on the same BLAS.
blas = Extension(
    "lstm_infer._blas",
    sources=["lstm_infer/_blas.pyx"],
    include_dirs=[np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=COMMON_CFLAGS,
)

setup(
    ext_modules=cythonize(
        [engine, blas],
        compiler_directives={
            "language_level": "3",
            "boundscheck": CHECKS,
            "wraparound": CHECKS,
            "initializedcheck": CHECKS,
            "cdivision": True,
        },
    ),
    cmdclass={"build_ext": BuildWithIsaKernels},
)
