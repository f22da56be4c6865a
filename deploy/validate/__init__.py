"""Validation: compare, measure, power, budgets, estimates, the artifact worker, `vdeploy validate`."""

from vdeploy import callable_as_api

callable_as_api(__name__, "validate")  # vdeploy.validate(bundle) re-runs a bundle; the package stays importable
