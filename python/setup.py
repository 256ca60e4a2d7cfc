"""The package's one compiled part: kvtorch/_latent.c, plain C loaded with
ctypes (no Python or torch headers). Optional: without a C compiler the
package installs without it and KVTorchCache computes with torch alone."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("kvtorch._latent", ["kvtorch/_latent.c"], optional=True,
                             extra_compile_args=["-O3", "-fopenmp", "-Wno-psabi"], extra_link_args=["-fopenmp"],
                             libraries=["m"])])
