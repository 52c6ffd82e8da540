//! `concord token`: prints the cluster's tokens, or a principal's credential, for the
//! operator (grpcurl, scripts, a process started by hand).
//!
//! It reads the secrets `concord up` created under `<data-dir>/secrets/` and never creates
//! any: asking for a token of a cluster that was never started is an error, not a new
//! random token nobody else knows.

use std::path::PathBuf;

use concord::{
    identity::{ClusterSecret, Principal},
    secrets::Secrets,
};

/// Flags of `concord token`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to print.
    #[command(subcommand)]
    pub what: What,
    /// The cluster's data directory (as given to `concord up`).
    #[arg(
        long,
        env = "CONCORD_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,
}

/// The token or credential to print.
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// The admin token (shop administration, Promote, order status).
    Admin,
    /// The oracle token (ReportOutcome).
    Oracle,
    /// A principal's credential, for `--credential` / `CONCORD_CREDENTIAL`.
    Credential {
        /// shop, aggregator, gateway, registry or node/<id>.
        principal: String,
    },
}

/// Prints the requested token on stdout, alone on its line.
pub fn run(args: Args) -> anyhow::Result<()> {
    println!("{}", token(&args)?);
    Ok(())
}

fn token(args: &Args) -> anyhow::Result<String> {
    let secrets = Secrets::load(&args.data_dir).map_err(|err| {
        anyhow::anyhow!(
            "no secrets in {} ({err}); start the cluster once with `concord up --data-dir {}`",
            concord::secrets::dir(&args.data_dir).display(),
            args.data_dir.display()
        )
    })?;
    Ok(match &args.what {
        What::Admin => secrets.admin_token,
        What::Oracle => secrets.oracle_token,
        What::Credential { principal } => {
            let principal = Principal::parse(principal)?;
            ClusterSecret::new(secrets.cluster_secret)?
                .issue(principal)
                .encode()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens come from the files `concord up` made; a missing cluster is an error.
    #[test]
    fn prints_stored_tokens_and_credentials() {
        let data = tempfile::tempdir().expect("tempdir");
        let args = |what| Args {
            what,
            data_dir: data.path().to_path_buf(),
        };
        assert!(token(&args(What::Admin)).is_err(), "nothing created yet");
        let secrets = Secrets::load_or_create(data.path()).expect("create");
        assert_eq!(
            token(&args(What::Admin)).expect("admin"),
            secrets.admin_token
        );
        assert_eq!(
            token(&args(What::Oracle)).expect("oracle"),
            secrets.oracle_token
        );
        let node = token(&args(What::Credential {
            principal: "node/node-1".into(),
        }))
        .expect("credential");
        let expected = ClusterSecret::new(secrets.cluster_secret)
            .expect("secret")
            .issue(Principal::Node("node-1".into()));
        assert_eq!(node, expected.encode());
        assert!(token(&args(What::Credential {
            principal: "admin".into()
        }))
        .is_err());
    }
}
