#!/usr/bin/env bash
# Static security scan of the rendered k8s overlays and the Dockerfiles with checkov.
#   bash deploy/k8s/checkov.sh
# checkov pins many packages of its own, so it lives in build/venv-deploy, never in .venv.
# Findings are fixed or skipped inline with a reason (checkov.io/skipN annotations in the
# manifests, `# checkov:skip=` in Dockerfiles); any other finding fails the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
CHECKOV_VERSION=3.3.30
VENV=build/venv-deploy
PY=.venv/bin/python
if [[ ! -x "$VENV/bin/checkov" ]] || ! "$VENV/bin/checkov" --version | grep -qx "$CHECKOV_VERSION"; then
  "$PY" -m venv --clear "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi
OUT=build/deploy/rendered
rm -rf "$OUT" && mkdir -p "$OUT"
for overlay in dev prod gpu; do
  "$PY" deploy/k8s/kustomize_lite.py "deploy/k8s/overlays/$overlay" -o "$OUT/$overlay.yaml"
done
files=()
for f in "$OUT"/*.yaml deploy/docker/*.Dockerfile; do files+=(-f "$f"); done
# CKV_K8S_21 (default namespace): false positive, the namespace is set by kustomize (every
# rendered resource carries metadata.namespace: llmesh).
exec "$VENV/bin/checkov" --quiet --compact --framework kubernetes dockerfile \
  --skip-check CKV_K8S_21 "${files[@]}"
