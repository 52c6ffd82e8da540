# syntax=docker/dockerfile:1
# Concord's container image: the one `concord` binary, whose first argument picks the role
# (`concord registry|node|aggregator|shop|gateway …`); deploy/kubernetes runs it.
#
#   docker build -t concord:0.1.0 .
#
# Not built in CI: CI has no Docker engine and cannot pull base images.
# scripts/validate-k8s.sh checks the manifests that use it.

ARG RUST_VERSION=1.95

# Builder: the workspace's sources (.dockerignore keeps target/, data/ and every secret
# out of the context).
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit caches keep the crate registry and target/ between builds; the binary is copied
# out because a cache mount is not part of any image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p concord-cli --bin concord \
 && install -D -m 0755 target/release/concord /out/concord

# Runtime: glibc of the same Debian release as the builder, nothing else. The binary
# needs no OpenSSL (rustls) and no CA bundle (cluster TLS uses the cluster's own CA).
FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 concord \
 && useradd --system --uid 10001 --gid concord --home-dir /var/lib/concord \
      --no-create-home --shell /usr/sbin/nologin concord \
 && install -d -o concord -g concord -m 0750 /var/lib/concord
COPY --from=build /out/concord /usr/local/bin/concord
# Non-root; numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# Where the shop's and the aggregator's volumes are mounted (deploy/kubernetes).
WORKDIR /var/lib/concord
ENV RUST_LOG=info
# registry, aggregator, node, shop (gRPC) and the gateway (HTTP).
EXPOSE 50050 50051 50052 50060 8080
# concord is PID 1: it stops gracefully on SIGTERM itself and starts no children (except
# `concord up`, which is for one machine, not for a container).
ENTRYPOINT ["/usr/local/bin/concord"]
CMD ["--help"]
