"""Build of the optional C extension; everything else is declared in pyproject.toml.

``services.features._native`` computes the features service's per-event aggregates with
the same numbers as the pure-Python code (tests/unit/features/test_native.py). It is
optional: without a C compiler or Python's headers the install goes on and the service
uses the Python code (docs/decisions/features-native-aggregates.md).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "services.features._native",
            ["services/features/_native.c"],
            optional=True,
            # Bit-for-bit equality with Python's float arithmetic: no fused multiply-add,
            # no reassociation.
            extra_compile_args=["-O2", "-ffp-contract=off", "-fno-fast-math", "-std=c11"],
        )
    ]
)
