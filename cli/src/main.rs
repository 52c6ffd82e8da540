//! `concord`: one binary for every role of the cluster, plus the launcher.
//!
//! `concord up` starts the whole cluster as child processes of this same binary and
//! supervises them; `concord <role>` runs one role in the foreground. Every flag also reads a
//! `CONCORD_*` environment variable. `main` stays thin: parse, set up tracing, dispatch.

mod bench;
mod certs;
mod chaos;
mod control_plane;
mod roles;
mod simulate;
mod status;
mod supervisor;
mod token;
mod up;
mod up_admin;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc, for every role: sled copies B-tree nodes on write
/// and tonic allocates per message; measured +6–8 % shop throughput (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Concord: consensus and redundancy over gRPC.
#[derive(Debug, Parser)]
#[command(name = "concord", version, about)]
struct Cli {
    /// Export traces over OTLP/HTTP to this collector (base URL, e.g.
    /// http://127.0.0.1:4318; `/v1/traces` is appended). Without it, trace context still
    /// travels between processes but nothing is exported. `concord up` passes it on.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Launch and supervise the whole cluster (registry, nodes, aggregator, shops, gateway).
    Up(up::Args),
    /// Make (or reuse) a development CA and per-process certificates for mutual TLS.
    Certs(certs::Args),
    /// Print the registry's view of the cluster.
    Status(status::Args),
    /// Load a server and print throughput and latency percentiles.
    Bench(bench::Args),
    /// Run a workload under injected faults and check the cluster's promises.
    Chaos(chaos::Args),
    /// Run the consensus aggregator and the stake ledger.
    Aggregator(roles::aggregator::Args),
    /// Run the web gateway (HTTP/JSON + browser UI).
    Gateway(roles::gateway::Args),
    /// Run one prediction node.
    Node(roles::node::Args),
    /// Run a shop (primary or replica).
    Shop(roles::shop::Args),
    /// Play the consensus policies against liars on a real loopback cluster.
    Simulate(simulate::Args),
    /// Run the service registry.
    Registry(roles::registry::Args),
    /// Print the admin or oracle token, or a principal's credential.
    Token(token::Args),
    /// Run one etcd member for `concord up --control-plane etcd` (internal).
    #[command(hide = true)]
    EtcdMember(control_plane::MemberArgs),
}

impl Command {
    /// The name this process's traces are exported under (`concord-<name>`).
    fn service_name(&self) -> &'static str {
        match self {
            Command::Up(_) => "up",
            Command::Certs(_) => "certs",
            Command::Status(_) => "status",
            Command::Bench(_) => "bench",
            Command::Chaos(_) => "chaos",
            Command::Aggregator(_) => "aggregator",
            Command::Gateway(_) => "gateway",
            Command::Node(_) => "node",
            Command::Shop(_) => "shop",
            Command::Simulate(_) => "simulate",
            Command::Registry(_) => "registry",
            Command::Token(_) => "token",
            Command::EtcdMember(_) => "etcd-member",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before the runtime: the exporter's blocking HTTP client lives on its own thread.
    // Dropped last, so spans of the shutdown are flushed too.
    let _telemetry = concord::telemetry::init_with_otlp(
        cli.command.service_name(),
        cli.otlp_endpoint.as_deref(),
    )?;
    let otlp_endpoint = cli.otlp_endpoint;
    // The load generator runs its own client threads, one runtime each (bench module doc).
    let command = match cli.command {
        Command::Bench(args) => return bench::run(args),
        command => command,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match command {
            Command::Up(args) => up::run(args, otlp_endpoint).await,
            Command::Certs(args) => certs::run(args),
            Command::Status(args) => status::run(args).await,
            Command::Bench(_) => unreachable!("the bench ran above, without this runtime"),
            Command::Chaos(args) => chaos::run(args).await,
            Command::Aggregator(args) => roles::aggregator::run(args).await,
            Command::Gateway(args) => roles::gateway::run(args).await,
            Command::Node(args) => roles::node::run(args).await,
            Command::Shop(args) => roles::shop::run(args).await,
            Command::Simulate(args) => simulate::run(args).await,
            Command::Registry(args) => roles::registry::run(args).await,
            Command::Token(args) => token::run(args),
            Command::EtcdMember(args) => control_plane::run_member(args).await,
        }
    })
}
