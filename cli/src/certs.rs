//! `concord certs`: a development PKI for mutual TLS — one CA and one certificate per
//! process, made with `rcgen` and reused when present.
//!
//! Layout of the output directory (keys are mode 0600, the directory 0700):
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the development CA (ECDSA P-256, 10 years) |
//! | `<stem>.pem`, `<stem>.key` | one process's certificate and key (1 year) |
//!
//! where `<stem>` is `registry`, `aggregator`, `shop`, `gateway` or `node.<id>` ([`stem`]).
//! Each certificate names its principal as SPIFFE URI SAN, its server name
//! (`concord::tls::server_name`: `shop.concord`, `node-1.node.concord`), `localhost`,
//! `127.0.0.1`, `::1` and any `--host`; it is valid for both server and client auth.
//!
//! Reuse: an existing CA is kept (its key must be there too); an existing certificate is
//! kept when it still loads under that CA for its principal (not expired, names intact),
//! else it is issued again. So running `concord certs` (or `concord up --tls`) again is
//! cheap and never rotates anything by surprise.
//!
//! Non-goals: a production CA. The CA key sits next to the certificates; whoever can read
//! the directory can mint any identity of the cluster.

use std::{
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use concord::{identity::Principal, tls::TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// How long the development CA is valid.
const CA_VALIDITY_DAYS: i64 = 3650;
/// How long a process certificate is valid (reissued on the next run once expired).
const CERT_VALIDITY_DAYS: i64 = 365;

/// Flags of `concord certs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write the CA and the certificates to (created; existing files reused).
    #[arg(long, env = "CONCORD_CERTS_DIR", default_value = "./data/certs")]
    pub out: PathBuf,
    /// Make certificates for node-1..node-N.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Extra host name or IP every certificate names, for peers on other machines
    /// (repeatable).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
}

/// Makes (or reuses) the PKI and prints where each process's files are.
pub fn run(args: Args) -> anyhow::Result<()> {
    let node_ids: Vec<String> = (1..=args.nodes).map(|n| format!("node-{n}")).collect();
    let pki = ensure_pki(&args.out, &principals(&node_ids), &args.hosts)?;
    println!("CA: {}", pki.ca.display());
    for (principal, _) in &pki.certs {
        let flags = pki.args(principal).unwrap_or_default().join(" ");
        println!("{:<16} {flags}", principal.name());
    }
    Ok(())
}

/// A development PKI on disk: the CA and each principal's files.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate every process trusts (`--tls-ca`).
    pub ca: PathBuf,
    /// Each principal's certificate, key and CA, in the order asked for.
    pub certs: Vec<(Principal, TlsFiles)>,
}

impl Pki {
    /// `principal`'s files, if the PKI has them.
    pub fn files(&self, principal: &Principal) -> Option<&TlsFiles> {
        self.certs
            .iter()
            .find_map(|(p, files)| (p == principal).then_some(files))
    }

    /// The flags a child running as `principal` needs:
    /// `--tls-cert <cert> --tls-key <key> --tls-ca <ca>`.
    pub fn args(&self, principal: &Principal) -> Option<Vec<String>> {
        let files = self.files(principal)?;
        Some(vec![
            "--tls-cert".into(),
            files.cert.display().to_string(),
            "--tls-key".into(),
            files.key.display().to_string(),
            "--tls-ca".into(),
            files.ca.display().to_string(),
        ])
    }
}

/// The PKI `concord up --tls` needs under `<data_dir>/certs`: registry, aggregator, shop,
/// gateway and each of `node_ids`, naming only loopback hosts.
pub fn ensure_dev_pki(data_dir: &Path, node_ids: &[String]) -> anyhow::Result<Pki> {
    ensure_pki(&data_dir.join("certs"), &principals(node_ids), &[])
}

/// The certificate of `concord up --control-plane etcd`'s etcd members, under the
/// development CA in `<data_dir>/certs` (`etcd.pem`, `etcd.key`): not a Concord principal
/// (no SPIFFE id), server and client use (members are each other's peers), naming
/// loopback. Made when missing; returns the member TLS files.
pub fn ensure_etcd_member_cert(data_dir: &Path) -> anyhow::Result<concord::etcd::MemberTls> {
    let dir = data_dir.join("certs");
    create_private_dir(&dir)?;
    let ca_cert = dir.join("ca.pem");
    let ca = load_or_create_ca(&ca_cert, &dir.join("ca.key"))?;
    let files = concord::etcd::MemberTls {
        cert: dir.join("etcd.pem"),
        key: dir.join("etcd.key"),
        ca: ca_cert,
    };
    let reusable = concord::etcd::EtcdTls::load(&files.ca, Some((&files.cert, &files.key))).is_ok()
        && std::fs::read(&files.cert)
            .ok()
            .and_then(|pem| {
                x509_parser::pem::parse_x509_pem(&pem)
                    .ok()
                    .and_then(|(_, pem)| pem.parse_x509().ok().map(|c| c.validity().is_valid()))
            })
            .unwrap_or(false);
    if !reusable {
        let key_pair = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, "etcd");
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
            SanType::IpAddress(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        sign_leaf(params, &key_pair, &ca, &files.cert, &files.key)?;
        tracing::info!(cert = %files.cert.display(), "issued the etcd members' certificate");
    }
    Ok(files)
}

/// Only `principals`' certificates under `<data_dir>/certs` (the same CA as
/// [`ensure_dev_pki`]).
pub fn ensure_dev_pki_for(data_dir: &Path, principals: &[Principal]) -> anyhow::Result<Pki> {
    ensure_pki(&data_dir.join("certs"), principals, &[])
}

/// Every role plus the given nodes.
fn principals(node_ids: &[String]) -> Vec<Principal> {
    let mut all = vec![
        Principal::Registry,
        Principal::Aggregator,
        Principal::Shop,
        Principal::Gateway,
    ];
    all.extend(node_ids.iter().cloned().map(Principal::Node));
    all
}

/// The file stem of `principal`'s certificate and key: its name, with `node.` before a
/// node id (so a node called `shop` cannot collide with the shop).
pub fn stem(principal: &Principal) -> String {
    match principal {
        Principal::Node(id) => format!("node.{id}"),
        other => other.name(),
    }
}

/// Makes or reuses the CA under `dir` and a certificate for each of `principals`, each
/// also naming `hosts`.
pub fn ensure_pki(dir: &Path, principals: &[Principal], hosts: &[String]) -> anyhow::Result<Pki> {
    create_private_dir(dir)?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let ca = load_or_create_ca(&ca_cert, &ca_key)?;
    let mut certs = Vec::with_capacity(principals.len());
    for principal in principals {
        Principal::parse(&principal.name())
            .with_context(|| format!("no certificate for {principal}"))?;
        let stem = stem(principal);
        let files = TlsFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
            ca: ca_cert.clone(),
        };
        let reusable = concord::tls::Tls::load(&files)
            .is_ok_and(|tls| tls.principal() == principal && names_hosts(&files.cert, hosts));
        if !reusable {
            issue(&ca, principal, hosts, &files)
                .with_context(|| format!("cannot issue {principal}'s certificate"))?;
            tracing::info!(%principal, cert = %files.cert.display(), "issued certificate");
        }
        certs.push((principal.clone(), files));
    }
    Ok(Pki { ca: ca_cert, certs })
}

/// The CA at `cert`/`key`, made first if neither exists.
fn load_or_create_ca(cert: &Path, key: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let key_pem = std::fs::read_to_string(key)
                .with_context(|| format!("cannot read {}", key.display()))?;
            let cert_pem = std::fs::read_to_string(cert)
                .with_context(|| format!("cannot read {}", cert.display()))?;
            let key_pair = KeyPair::from_pem(&key_pem)
                .with_context(|| format!("{} is not a private key", key.display()))?;
            Issuer::from_ca_cert_pem(&cert_pem, key_pair)
                .with_context(|| format!("{} is not a CA certificate", cert.display()))
        }
        (false, false) => {
            let key_pair = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params
                .distinguished_name
                .push(DnType::CommonName, "Concord development CA");
            params
                .distinguished_name
                .push(DnType::OrganizationName, "Concord");
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
            let ca = params.self_signed(&key_pair)?;
            write_file(key, key_pair.serialize_pem().as_bytes(), 0o600)?;
            write_file(cert, ca.pem().as_bytes(), 0o644)?;
            tracing::info!(cert = %cert.display(), "created development CA");
            Ok(Issuer::new(params, key_pair))
        }
        (true, false) => anyhow::bail!(
            "{} exists but its key {} does not: restore the key or remove the directory",
            cert.display(),
            key.display()
        ),
        (false, true) => anyhow::bail!(
            "{} exists but the CA certificate {} does not: restore it or remove the directory",
            key.display(),
            cert.display()
        ),
    }
}

/// Issues `principal`'s certificate and key into `files`.
fn issue(
    ca: &Issuer<'_, KeyPair>,
    principal: &Principal,
    hosts: &[String],
    files: &TlsFiles,
) -> anyhow::Result<()> {
    let key_pair = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, principal.name());
    let mut sans = vec![
        SanType::URI(principal.spiffe_id().try_into()?),
        SanType::DnsName(concord::tls::server_name(principal).try_into()?),
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    ];
    for host in hosts {
        sans.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into()?),
        });
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    sign_leaf(params, &key_pair, ca, &files.cert, &files.key)
}

/// Signs a leaf certificate for both server and client use (every peer is both), valid
/// from an hour ago (clock skew) for [`CERT_VALIDITY_DAYS`], and writes it and its key
/// (the key readable by the owner only).
fn sign_leaf(
    mut params: CertificateParams,
    key_pair: &KeyPair,
    ca: &Issuer<'_, KeyPair>,
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<()> {
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(CERT_VALIDITY_DAYS);
    let cert = params.signed_by(key_pair, ca)?;
    write_file(key_path, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_file(cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// Whether the certificate at `cert` names every one of `hosts` (so a new `--host`
/// reissues it).
fn names_hosts(cert: &Path, hosts: &[String]) -> bool {
    if hosts.is_empty() {
        return true;
    }
    use x509_parser::prelude::GeneralName;
    let Ok(pem) = std::fs::read(cert) else {
        return false;
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&pem) else {
        return false;
    };
    let Ok(parsed) = pem.parse_x509() else {
        return false;
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return false;
    };
    let names = &san.value.general_names;
    hosts.iter().all(|host| {
        let ip = host.parse::<IpAddr>().ok();
        names.iter().any(|name| match (name, ip) {
            (GeneralName::DNSName(dns), None) => dns.eq_ignore_ascii_case(host),
            (GeneralName::IPAddress(bytes), Some(IpAddr::V4(v4))) => *bytes == v4.octets(),
            (GeneralName::IPAddress(bytes), Some(IpAddr::V6(v6))) => *bytes == v6.octets(),
            _ => false,
        })
    })
}

/// Creates `dir` (mode 0700 when new).
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes `contents` to `path` with `mode`, through a temporary file and a rename, so a
/// crash never leaves half a key behind.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    /// The PKI has a loadable certificate per principal, private keys, and is reused as is
    /// on the next run (a missing certificate alone is issued again).
    #[test]
    fn dev_pki_is_made_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes = vec!["node-1".to_owned(), "node-2".to_owned()];
        let pki = ensure_dev_pki(dir.path(), &nodes).expect("pki");
        assert_eq!(pki.certs.len(), 6);
        for (principal, files) in &pki.certs {
            let tls = concord::tls::Tls::load(files).expect("loads");
            assert_eq!(tls.principal(), principal);
            assert_eq!(mode(&files.key), 0o600, "{principal}");
        }
        assert_eq!(mode(&dir.path().join("certs/ca.key")), 0o600);
        let node1 = Principal::Node("node-1".into());
        assert_eq!(
            pki.args(&node1).expect("node-1")[1],
            dir.path()
                .join("certs/node.node-1.pem")
                .display()
                .to_string()
        );

        let read = |p: &Path| std::fs::read(p).expect("read");
        let ca_before = read(&pki.ca);
        let shop_before = read(&pki.files(&Principal::Shop).expect("shop").cert);
        std::fs::remove_file(&pki.files(&node1).expect("node-1").cert).expect("remove");
        let again = ensure_dev_pki(dir.path(), &nodes).expect("pki again");
        assert_eq!(read(&again.ca), ca_before, "CA reused");
        assert_eq!(
            read(&again.files(&Principal::Shop).expect("shop").cert),
            shop_before,
            "certificate reused"
        );
        concord::tls::Tls::load(again.files(&node1).expect("node-1")).expect("node-1 reissued");
    }

    /// A new --host reissues the certificates so they name it.
    #[test]
    fn extra_hosts_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let principals = [Principal::Shop];
        ensure_pki(dir.path(), &principals, &[]).expect("pki");
        let cert = dir.path().join("shop.pem");
        let hosts = vec!["10.1.2.3".to_owned(), "shop.example".to_owned()];
        assert!(!names_hosts(&cert, &hosts));
        ensure_pki(dir.path(), &principals, &hosts).expect("pki with hosts");
        assert!(names_hosts(&cert, &hosts));
    }
}
