"""The compiled decoder (common/_cevents.c), the one thing pyproject.toml cannot declare in a stable form.

Optional: an install without a C compiler still works, on the pure-Python code it mirrors (slower; the sink's
start-up log line says which one runs: compiled_decoder). scripts/test.sh requires it built.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "common._cevents",
            sources=["common/_cevents.c"],
            extra_compile_args=["-O2"],
            libraries=["m"],
            optional=True,
        )
    ]
)
