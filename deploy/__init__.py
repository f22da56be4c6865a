"""vdeploy: compile vision models for edge targets, validate them against budgets, write release bundles."""

__version__ = "0.1.0"
