"""The one compiled part: protocol/_sha256d.c, the share check's SHA-256 and hex fields (see that file
for why).

`optional=True`: where no C compiler or no OpenSSL headers are, the build goes on without it and
protocol.work hashes in Python (same results; ~9 µs more per share with a fresh extranonce2).
Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "protocol._sha256d",
            sources=["protocol/_sha256d.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
            optional=True,
        )
    ]
)
