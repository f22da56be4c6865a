#!/usr/bin/env sh
# mypy over the library as Python imports it (vdeploy, vdeploy.backends, vdeploy.graph_passes): the setuptools
# package-dir mapping has no on-disk `vdeploy/` folder, so a tree of links under build/typecheck stands in for it.
set -eu
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
tree=build/typecheck/vdeploy
rm -rf build/typecheck
mkdir -p "$tree"
for f in deploy/*.py deploy/targets.yaml; do ln -s "$PWD/$f" "$tree/$(basename "$f")"; done
ln -s "$PWD/deploy/validate" "$tree/validate"
ln -s "$PWD/deploy/matrix" "$tree/matrix"
ln -s "$PWD/deploy/fit" "$tree/fit"
ln -s "$PWD/backends" "$tree/backends"
ln -s "$PWD/graph_passes" "$tree/graph_passes"
cd build/typecheck
exec "../../$PY" -m mypy --config-file ../../pyproject.toml -p vdeploy
