"""Build hook for the optional compiled fast lane (probe/_lane.c); everything else is in pyproject.toml.

The extension is optional: where it cannot be compiled (no C compiler or Python headers) the
package installs without it and the pure-Python path in probe/pipeline.py runs instead.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("probe._lane", ["probe/_lane.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"])])
