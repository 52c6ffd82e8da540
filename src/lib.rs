//! Concord's shared layer: the generated protocol stubs and the few pieces every server and
//! client in the workspace needs, so that each service crate only holds its own domain.
//!
//! - [`pb`]: the stubs compiled from `proto/` by `build.rs` (plus the descriptor set that
//!   server reflection serves).
//! - [`grpc`]: one way to run a gRPC server: limits, request-id spans, health, reflection
//!   (v1 and v1alpha) and a bounded graceful shutdown; and one way to dial a peer.
//! - [`error`]: the single mapping from a crate's error categories to `tonic::Status`;
//!   [`grpc_utf8`]: non-UTF-8 request strings answered `INVALID_ARGUMENT` on every server.
//! - [`auth`]: bearer tokens (admin, oracle); [`identity`]: who is calling inside the
//!   cluster (principals, credentials, client certificates); [`tls`]: mutual TLS between
//!   processes; [`secrets`]: the cluster's secrets on disk.
//! - [`discovery`]: a registry client that keeps a lease alive (re-registering after a
//!   registry restart) and one that watches a service's instance set.
//! - [`claim`]: the `role`/`term` a shop publishes in the registry, parsed by one rule.
//! - [`metrics`], [`grpc_metrics`]: the Prometheus page every process serves and the
//!   per-method gRPC families; [`telemetry`]: `RUST_LOG` logs, W3C trace context, OTLP.
//! - [`config`], [`shutdown`]: defaults, duration flags, signals; [`clock`]: Unix
//!   milliseconds; [`retry`]: the one backoff policy every reconnecting loop waits by.
//! - [`etcd`]: a minimal client of etcd's v3 API, for the registry's etcd store.

pub mod auth;
pub mod claim;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod error;
pub mod etcd;
pub mod grpc;
pub mod grpc_metrics;
pub mod grpc_utf8;
pub mod identity;
pub mod metrics;
pub mod pb;
pub mod retry;
pub mod secrets;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod tls;
