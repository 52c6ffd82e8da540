#!/usr/bin/env bash
# Prints the Kubernetes Secrets of one Concord cluster, one Secret per role holding only
# what that role needs, exactly as `concord up` hands its children their environment:
#
#   concord-registry    cluster-secret                        (checks every registration)
#   concord-aggregator  cluster-secret, oracle-token, credential
#   concord-shop        admin-token, session-key, credential  (both shops: one principal)
#   concord-gateway     credential
#   concord-node-N      credential of node/node-N             (never the cluster secret)
#
# The secrets come from <data-dir>/secrets/ (cluster-secret, admin-token, oracle-token, session-key,
# the files `concord up` makes), created at random (mode 0600) when missing, so running it
# again prints the same Secrets and `concord token admin --data-dir <data-dir>` prints the
# cluster's admin token. Credentials are derived by `concord token credential`, the one
# implementation of the derivation. Nothing is written to the repository.
#
# --tls adds each role's certificate for mutual TLS (the mtls/ variant): `tls.crt`,
# `tls.key` and `ca.crt`, made by `concord certs` in <data-dir>/certs/ (reused when there).
#
# Usage: make-secrets.sh [--data-dir DIR] [--namespace NS] [--nodes N] [--tls] | kubectl apply -f -
# The `concord` binary: $CONCORD_BIN, else `concord` on PATH.
set -euo pipefail

data_dir=./data/k8s
namespace=concord
nodes=5
tls=false
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) data_dir="$2"; shift 2 ;;
    --namespace) namespace="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --tls) tls=true; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "make-secrets.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$nodes" in
  ''|*[!0-9]*) echo "make-secrets.sh: --nodes takes a number" >&2; exit 2 ;;
esac
concord="${CONCORD_BIN:-concord}"
if ! command -v "$concord" >/dev/null 2>&1; then
  echo "make-secrets.sh: no concord binary ($concord); build one (cargo build --release) and set CONCORD_BIN" >&2
  exit 1
fi

secrets="$data_dir/secrets"
umask 077
mkdir -p "$secrets"
chmod 700 "$secrets"
for name in cluster-secret admin-token oracle-token session-key; do
  if [ ! -s "$secrets/$name" ]; then
    # 32 random bytes, hex: what `concord up` makes.
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$secrets/$name"
  fi
done
read_secret() { tr -d ' \n' < "$secrets/$1"; }
credential() { "$concord" token credential "$1" --data-dir "$data_dir"; }
certs="$data_dir/certs"
if [ "$tls" = true ]; then
  RUST_LOG=warn "$concord" certs --out "$certs" --nodes "$nodes" >/dev/null
fi

# One Secret: its name, the file stem of its certificate in $certs (with --tls), then
# key=value pairs (hex and `principal:hex` only, so a double-quoted YAML scalar needs no
# escaping). PEM files go base64-encoded under `data`.
secret() {
  local name="$1" cert="$2"; shift 2
  printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\n' "$name" "$namespace"
  printf '  labels:\n    app.kubernetes.io/name: concord\ntype: Opaque\nstringData:\n'
  local pair
  for pair in "$@"; do
    printf '  %s: "%s"\n' "${pair%%=*}" "${pair#*=}"
  done
  if [ "$tls" = true ] && [ -n "$cert" ]; then
    printf 'data:\n'
    printf '  tls.crt: %s\n' "$(base64 -w0 < "$certs/$cert.pem")"
    printf '  tls.key: %s\n' "$(base64 -w0 < "$certs/$cert.key")"
    printf '  ca.crt: %s\n' "$(base64 -w0 < "$certs/ca.pem")"
  fi
}

cluster_secret="$(read_secret cluster-secret)"
secret concord-registry registry "cluster-secret=$cluster_secret"
secret concord-aggregator aggregator "cluster-secret=$cluster_secret" \
  "oracle-token=$(read_secret oracle-token)" "credential=$(credential aggregator)"
secret concord-shop shop "admin-token=$(read_secret admin-token)" \
  "session-key=$(read_secret session-key)" "credential=$(credential shop)"
secret concord-gateway gateway "credential=$(credential gateway)"
for n in $(seq 1 "$nodes"); do
  secret "concord-node-$n" "node.node-$n" "credential=$(credential "node/node-$n")"
done
