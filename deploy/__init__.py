"""vdeploy: compile vision models for edge targets, validate them against budgets, write release bundles.

Python API (imported on first use, so `import vdeploy` stays light): vdeploy.build, vdeploy.coverage, vdeploy.debug,
vdeploy.validate, vdeploy.targets() — see vdeploy.api.
"""

__version__ = "0.1.0"

_API = ("build", "coverage", "debug", "validate")


def __getattr__(name: str):
    if name in _API:
        from vdeploy import api

        return getattr(api, name)
    if name == "targets":  # the catalogue module, callable as vdeploy.targets() (see the end of targets.py)
        import importlib

        return importlib.import_module("vdeploy.targets")
    raise AttributeError(f"module 'vdeploy' has no attribute {name!r}")
