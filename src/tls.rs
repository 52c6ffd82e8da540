//! Mutual TLS between Concord processes: the names a certificate carries, loading PEM files
//! into tonic's rustls configs, and the one TLS setting of a process.
//!
//! ## What a certificate names
//! Every process holds one certificate signed by the cluster's CA (`concord certs` makes a
//! development CA and one certificate per process). It carries:
//! - the principal's SPIFFE id as URI SAN (`spiffe://concord/shop`,
//!   `spiffe://concord/node/node-1`): a server reads the *caller's* principal from it
//!   ([`crate::identity::authenticate`]), so a role is proved by the handshake, never by a
//!   claim in a message;
//! - the DNS SAN [`server_name`] (`shop.concord`, `node-1.node.concord`): a client checks
//!   the *server's* principal with it;
//! - `localhost` and `127.0.0.1` (plus any host the operator adds), so tools that only know
//!   an address (`grpcurl -cacert`, `concord status`) can verify it.
//!
//! ## How a client checks whom it reached
//! A channel dialled for a known peer ([`crate::grpc::lazy_channel_to`]) sets the TLS server
//! name to that peer's [`server_name`], whatever address it dials: rustls completes the
//! handshake only if the server's chain ends at our CA and its certificate carries that DNS
//! name, which only the peer principal's certificate does. So a replica dialling the
//! primary it read from the registry gets a shop or nothing; the gateway sends the admin's
//! bearer token only to a server that proved it is a shop; the aggregator attributes
//! node-1's answers only to a server holding node-1's certificate. A channel without an
//! expected peer ([`crate::grpc::lazy_channel`]) verifies the address it dials (any cluster
//! member's certificate names `127.0.0.1`), which proves membership, not role: only tools
//! use it.
//!
//! ## One setting per process
//! A process has exactly one identity, so its TLS setting is [`install`]ed once at start-up
//! and [`crate::grpc::router`] and [`crate::grpc::lazy_channel`] consult it. Every service
//! crate builds its servers and channels through those functions, so one setting reaches
//! all of them without threading a config through each crate's `Config` (and in-process
//! tests, which install nothing, stay plaintext). Code that needs TLS explicitly (tests
//! that run a TLS server and a plaintext one in one process) uses
//! [`crate::grpc::router_with_tls`] and [`crate::grpc::lazy_channel_with_tls`].
//!
//! Crypto is rustls with the `ring` provider (no cmake build, unlike `aws-lc-rs`); it is
//! installed as the process default the first time a [`Tls`] is built.
//!
//! Non-goals: certificate rotation without a restart, revocation (a leaked key is handled
//! by a new CA), and trust domains other than `concord`.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use rustls::{
    client::{danger::ServerCertVerifier, WebPkiServerVerifier},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::WebPkiClientVerifier,
    RootCertStore,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::{auth::AuthError, identity::Principal};

/// The DNS suffix of every server name ([`server_name`]).
pub const DNS_SUFFIX: &str = "concord";

/// Longest a TLS handshake may take, on either side, before the connection is dropped (a
/// peer that opens connections and never finishes the handshake holds nothing for long).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The DNS name `principal`'s certificate carries and clients verify: `<role>.concord`,
/// and `<id>.node.concord` for a node.
pub fn server_name(principal: &Principal) -> String {
    match principal {
        Principal::Node(id) => format!("{id}.node.{DNS_SUFFIX}"),
        other => format!("{}.{DNS_SUFFIX}", other.name()),
    }
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The material does not parse or does not fit together.
    #[error("{0}")]
    Invalid(String),
}

/// Where a process's PEM files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate (leaf first; intermediates may follow).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The cluster CA: the only root peers are checked against.
    pub ca: PathBuf,
}

/// A process's TLS identity and the CA it trusts, checked to fit together.
#[derive(Clone)]
pub struct Tls {
    identity: Identity,
    ca: Certificate,
    principal: Principal,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({})", self.principal)
    }
}

impl Tls {
    /// Reads and checks the files (see [`Tls::from_pem`]).
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Self::from_pem(&read(&files.cert)?, &read(&files.key)?, &read(&files.ca)?).map_err(|err| {
            TlsError::Invalid(format!(
                "{err} (cert {}, key {}, CA {})",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            ))
        })
    }

    /// Checks PEM material before any connection needs it: the key matches the
    /// certificate, the certificate chains to the CA for both client and server use, and it
    /// names exactly one principal (its SPIFFE id) plus that principal's [`server_name`].
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Result<Self, TlsError> {
        ensure_crypto_provider();
        let invalid =
            |what: &str, err: &dyn std::fmt::Display| TlsError::Invalid(format!("{what}: {err}"));
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("the certificate is not PEM", &e))?;
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| TlsError::Invalid("the certificate file holds no certificate".into()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| invalid("the key is not a PEM private key", &e))?;
        let cas = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("the CA is not PEM", &e))?;
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| invalid("the CA certificate does not parse", &e))?;
        }
        if roots.is_empty() {
            return Err(TlsError::Invalid("the CA file holds no certificate".into()));
        }
        let roots = Arc::new(roots);
        let principal = principal_of_certificate(leaf)
            .map_err(|e| invalid("the certificate names no Concord principal", &e))?;

        let now = UnixTime::now();
        WebPkiClientVerifier::builder(Arc::clone(&roots))
            .build()
            .map_err(|e| invalid("the CA cannot verify clients", &e))?
            .verify_client_cert(leaf, intermediates, now)
            .map_err(|e| invalid("the certificate is not valid under the CA as a client", &e))?;
        let name = ServerName::try_from(server_name(&principal))
            .map_err(|e| invalid("the principal has no valid server name", &e))?;
        WebPkiServerVerifier::builder(roots)
            .build()
            .map_err(|e| invalid("the CA cannot verify servers", &e))?
            .verify_server_cert(leaf, intermediates, &name, &[], now)
            .map_err(|e| {
                invalid(
                    &format!("the certificate is not valid under the CA as server {name:?}"),
                    &e,
                )
            })?;
        // Fails when the key is not the certificate's.
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key)
            .map_err(|e| invalid("the key does not fit the certificate", &e))?;

        Ok(Self {
            identity: Identity::from_pem(cert_pem, key_pem),
            ca: Certificate::from_pem(ca_pem),
            principal,
        })
    }

    /// The principal this process's certificate names.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// A server config that requires every client to present a certificate of our CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// A client config presenting our certificate and trusting only our CA; with `server`,
    /// the server must prove it is that principal ([`server_name`]), else the address
    /// dialled is verified.
    pub fn client_config(&self, server: Option<&Principal>) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .timeout(HANDSHAKE_TIMEOUT);
        match server {
            Some(server) => config.domain_name(server_name(server)),
            None => config,
        }
    }
}

static PROCESS_TLS: OnceLock<Tls> = OnceLock::new();

/// Makes `tls` this process's TLS setting: from now on [`crate::grpc::router`] serves TLS
/// with it and [`crate::grpc::lazy_channel`] dials with it. Once per process; a second call
/// is refused (the first setting stays).
pub fn install(tls: Tls) -> Result<(), TlsError> {
    PROCESS_TLS
        .set(tls)
        .map_err(|_| TlsError::Invalid("TLS is already set up for this process".into()))
}

/// This process's TLS setting, if [`install`] ran.
pub fn installed() -> Option<&'static Tls> {
    PROCESS_TLS.get()
}

/// Installs rustls's `ring` provider as the process default, once (idempotent; a test whose
/// binary also links another provider calls it before any TLS client). tonic's server side
/// takes the default provider, and with another provider compiled in (a dev-dependency's
/// `aws-lc-rs`) rustls could not choose one by itself.
pub fn ensure_crypto_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Err only when another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The principal a DER certificate names: its one `spiffe://concord/…` URI SAN.
///
/// The certificate's signature is not checked here: call this only on a chain rustls has
/// already verified (the peer certificates of a mutual-TLS connection).
pub fn principal_of_certificate(der: &[u8]) -> Result<Principal, AuthError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let malformed = |why: String| AuthError::Malformed(why);
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| malformed(format!("the certificate does not parse: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| malformed(format!("the certificate's SAN does not parse: {e}")))?
        .ok_or_else(|| malformed("the certificate has no subjectAltName".into()))?;
    let mut spiffe_ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        });
    match (spiffe_ids.next(), spiffe_ids.next()) {
        (Some(uri), None) => Principal::from_spiffe_id(uri),
        (None, _) => Err(malformed(
            "the certificate carries no spiffe:// URI SAN".into(),
        )),
        (Some(_), Some(_)) => Err(malformed(
            "the certificate carries more than one spiffe:// URI SAN".into(),
        )),
    }
}

/// Test-only PKI: a CA and certificates made in memory with `rcgen`.
#[cfg(test)]
pub mod test {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };

    /// A throwaway CA that issues certificates with arbitrary SANs.
    pub struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        /// The CA certificate, PEM.
        pub pem: String,
    }

    /// A certificate and its key, PEM.
    pub struct TestCert {
        /// The certificate, PEM.
        pub cert: String,
        /// Its key, PEM.
        pub key: String,
        /// The certificate, DER.
        pub der: CertificateDer<'static>,
    }

    impl Default for TestCa {
        fn default() -> Self {
            Self::new()
        }
    }

    impl TestCa {
        /// A new CA.
        pub fn new() -> Self {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "concord test CA");
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let pem = params.self_signed(&key).expect("self-signed").pem();
            Self {
                issuer: Issuer::new(params, key),
                pem,
            }
        }

        /// A certificate with exactly `sans`.
        pub fn issue_sans(&self, sans: Vec<SanType>) -> TestCert {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.subject_alt_names = sans;
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &self.issuer).expect("sign");
            TestCert {
                cert: cert.pem(),
                key: key.serialize_pem(),
                der: cert.der().clone(),
            }
        }

        /// A certificate for `principal` as `concord certs` makes it.
        pub fn issue(&self, principal: &Principal) -> TestCert {
            self.issue_sans(vec![
                SanType::URI(principal.spiffe_id().try_into().expect("ia5")),
                SanType::DnsName(server_name(principal).try_into().expect("ia5")),
                SanType::DnsName("localhost".try_into().expect("ia5")),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ])
        }

        /// `principal`'s [`Tls`] under this CA.
        pub fn tls(&self, principal: &Principal) -> Tls {
            let cert = self.issue(principal);
            Tls::from_pem(
                cert.cert.as_bytes(),
                cert.key.as_bytes(),
                self.pem.as_bytes(),
            )
            .expect("valid test TLS")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test::TestCa;
    use super::*;
    use rcgen::SanType;

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().expect("ia5"))
    }

    /// Server names: one per role, one per node id.
    #[test]
    fn server_names() {
        let cases = [
            (Principal::Shop, "shop.concord"),
            (Principal::Registry, "registry.concord"),
            (Principal::Node("node-1".into()), "node-1.node.concord"),
        ];
        for (principal, want) in cases {
            assert_eq!(server_name(&principal), want);
        }
    }

    /// The principal comes from the one spiffe:// URI SAN; none, two or a foreign trust
    /// domain are refused.
    #[test]
    fn principal_from_certificate() {
        let ca = TestCa::new();
        let node = Principal::Node("node-7".into());
        assert_eq!(principal_of_certificate(&ca.issue(&node).der), Ok(node));
        let cases: Vec<(Vec<SanType>, bool)> = vec![
            (vec![uri("spiffe://concord/shop")], true),
            (
                vec![uri("https://concord/shop"), uri("spiffe://concord/shop")],
                true,
            ),
            (vec![], false),
            (
                vec![SanType::DnsName("shop.concord".try_into().unwrap())],
                false,
            ),
            (vec![uri("spiffe://other/shop")], false),
            (vec![uri("spiffe://concord/admin")], false),
            (
                vec![
                    uri("spiffe://concord/shop"),
                    uri("spiffe://concord/gateway"),
                ],
                false,
            ),
        ];
        for (sans, ok) in cases {
            let described = format!("{sans:?}");
            let got = principal_of_certificate(&ca.issue_sans(sans).der);
            assert_eq!(got.is_ok(), ok, "{described}: {got:?}");
        }
    }

    /// Loading checks that the pieces fit: a foreign CA, a foreign key and a certificate
    /// without the principal's server name are refused with a message.
    #[test]
    fn loading_checks_the_material() {
        let ca = TestCa::new();
        let other_ca = TestCa::new();
        let shop = ca.issue(&Principal::Shop);
        let gateway = ca.issue(&Principal::Gateway);
        let load = |cert: &str, key: &str, ca: &str| {
            Tls::from_pem(cert.as_bytes(), key.as_bytes(), ca.as_bytes())
        };
        let tls = load(&shop.cert, &shop.key, &ca.pem).expect("valid");
        assert_eq!(tls.principal(), &Principal::Shop);
        let no_server_name = ca.issue_sans(vec![uri("spiffe://concord/shop")]);
        for (cert, key, ca_pem, want) in [
            (
                &shop.cert,
                &shop.key,
                &other_ca.pem,
                "not valid under the CA",
            ),
            (&shop.cert, &gateway.key, &ca.pem, "key does not fit"),
            (
                &no_server_name.cert,
                &no_server_name.key,
                &ca.pem,
                "as server",
            ),
            (&shop.key, &shop.key, &ca.pem, "no certificate"),
            (&shop.cert, &shop.cert, &ca.pem, "not a PEM private key"),
        ] {
            let err = load(cert, key, ca_pem).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }
}
