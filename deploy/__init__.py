"""vdeploy: compile vision models for edge targets, validate them against budgets, write release bundles.

Python API (imported on first use, so `import vdeploy` stays light): vdeploy.build, vdeploy.coverage, vdeploy.debug,
vdeploy.validate, vdeploy.targets(), vdeploy.keygen — see vdeploy.api.
"""

__version__ = "0.1.0"

_API = ("build", "coverage", "debug", "keygen")


def callable_as_api(module_name: str, function: str) -> None:
    """Make a submodule callable as the API function of the same name. Python sets a package's attribute to its
    submodule when that is imported, so `vdeploy.targets` / `vdeploy.validate` are the modules: calling them calls
    vdeploy.api.targets / vdeploy.api.validate."""
    import sys
    import types

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            from vdeploy import api

            return getattr(api, function)(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule


def __getattr__(name: str):
    if name in _API:
        from vdeploy import api

        return getattr(api, name)
    if name in ("targets", "validate"):  # submodules that are also API calls: see callable_as_api
        import importlib

        return importlib.import_module(f"vdeploy.{name}")
    raise AttributeError(f"module 'vdeploy' has no attribute {name!r}")
