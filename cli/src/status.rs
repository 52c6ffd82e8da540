//! `concord status`: the registry's view of the cluster, as a table.

use concord::pb::registry::v1::{registry_client::RegistryClient, ListRequest};

/// Flags of `concord status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Registry to ask.
    #[arg(long, env = "CONCORD_REGISTRY", default_value = concord::config::DEFAULT_REGISTRY_ADDR)]
    pub registry: String,
    /// Mutual TLS towards the registry: any cluster certificate will do.
    #[command(flatten)]
    pub tls: crate::roles::TlsArgs,
}

/// Prints every live instance the registry knows.
pub async fn run(args: Args) -> anyhow::Result<()> {
    args.tls
        .install(None, None, None, &[args.registry.as_str()])?;
    let channel = concord::grpc::lazy_channel_to(
        // Of a list (`a,b`), the first registry: they all see the same leases.
        concord::discovery::registry_addrs(&args.registry)
            .first()
            .copied()
            .unwrap_or(&args.registry),
        &concord::identity::Principal::Registry,
    )?;
    let mut client = RegistryClient::new(channel);
    let list = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        client.list(ListRequest {}),
    )
    .await
    .map_err(|_| anyhow::anyhow!("registry at {} did not answer in 3 s", args.registry))?
    .map_err(|status| {
        anyhow::anyhow!(
            "registry at {} answered {:?}: {}",
            args.registry,
            status.code(),
            status.message()
        )
    })?
    .into_inner();
    println!("registry {} (revision {})", args.registry, list.revision);
    println!(
        "{:<12} {:<22} {:<10} METADATA",
        "SERVICE", "ADDRESS", "EXPIRES"
    );
    let now_ms = concord::clock::unix_ms();
    for instance in list.instances {
        let mut metadata: Vec<String> = instance
            .metadata
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        metadata.sort();
        println!(
            "{:<12} {:<22} {:<10} {}",
            instance.service,
            instance.address,
            // Lease ids are not published; show how long the lease has left instead.
            format!(
                "in {:.1}s",
                (instance.expires_at_unix_ms - now_ms).max(0) as f64 / 1000.0
            ),
            metadata.join(" ")
        );
    }
    Ok(())
}
