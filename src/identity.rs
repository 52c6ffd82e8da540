//! Who is calling, inside the cluster: principals and the credentials that prove them.
//!
//! Every process of a Concord cluster acts as one [`Principal`]: a shop, the aggregator,
//! the gateway, the registry, or one prediction node by id. A process proves it in one of
//! two ways:
//!
//! - **A credential** ([`Credential`]): `hex(HMAC-SHA256(cluster_secret, "concord/v1/" +
//!   principal))`, sent as metadata `x-concord-credential: <principal>:<hex>`. Whoever
//!   holds the cluster secret (the launcher, the registry, the aggregator's staking
//!   service) can issue and check any credential; a process that holds only its own
//!   credential can neither forge another principal's nor check anyone else's, except the
//!   same principal's (two shops recognise each other by comparing with their own).
//! - **A TLS client certificate** (mutual TLS between hosts; see the `tls` module), whose
//!   URI SAN is the principal's SPIFFE id (`spiffe://concord/<principal>`).
//!
//! The principal's name is part of the MAC input, so a node id can never yield a role's
//! credential ("node/shop" and "shop" are different inputs). Nothing here trusts a claim
//! inside a message: services compare what a request *says* (a `node_id`, a role) with the
//! principal [`authenticate`] returned.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::auth::AuthError;

/// Metadata key that carries `<principal>:<hex credential>`.
pub const CREDENTIAL_HEADER: &str = "x-concord-credential";

/// Longest node id a principal may name (bytes); the registry and the ledger use the same.
pub const MAX_NODE_ID_LEN: usize = 64;

/// Domain separation for the MAC, versioned so the scheme can change.
const MAC_CONTEXT: &str = "concord/v1/";

/// The prediction nodes' registry service (any node, each under its own `node_id`).
pub const PREDICTOR_SERVICE: &str = "predictor";
/// The shops' registry service.
pub const SHOP_SERVICE: &str = "shop";
/// The aggregator's registry service.
pub const AGGREGATOR_SERVICE: &str = "aggregator";
/// The gateway's registry service.
pub const GATEWAY_SERVICE: &str = "gateway";

/// An identity inside the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A shop process (primary or replica: the role is the registry's to grant).
    Shop,
    /// The consensus aggregator (also runs `Staking`).
    Aggregator,
    /// The web gateway.
    Gateway,
    /// The registry itself (its server certificate; it calls nobody).
    Registry,
    /// One prediction node, by id.
    Node(String),
}

impl Principal {
    /// Parses the form [`Principal::name`] prints: `shop`, `aggregator`, `gateway`,
    /// `registry` or `node/<id>`.
    pub fn parse(name: &str) -> Result<Self, AuthError> {
        match name {
            "shop" => Ok(Self::Shop),
            "aggregator" => Ok(Self::Aggregator),
            "gateway" => Ok(Self::Gateway),
            "registry" => Ok(Self::Registry),
            other => match other.strip_prefix("node/") {
                Some(id) if valid_node_id(id) => Ok(Self::Node(id.to_owned())),
                _ => Err(AuthError::Malformed(format!(
                    "unknown principal {:?}: expected shop, aggregator, gateway, registry or node/<id>",
                    crate::error::quote(other)
                ))),
            },
        }
    }

    /// The principal's name: `shop`, …, `node/<id>`.
    pub fn name(&self) -> String {
        match self {
            Self::Shop => "shop".to_owned(),
            Self::Aggregator => "aggregator".to_owned(),
            Self::Gateway => "gateway".to_owned(),
            Self::Registry => "registry".to_owned(),
            Self::Node(id) => format!("node/{id}"),
        }
    }

    /// The SPIFFE id a certificate for this principal carries as its URI SAN.
    pub fn spiffe_id(&self) -> String {
        format!("spiffe://concord/{}", self.name())
    }

    /// The principal a SPIFFE id names.
    pub fn from_spiffe_id(uri: &str) -> Result<Self, AuthError> {
        let name = uri.strip_prefix("spiffe://concord/").ok_or_else(|| {
            AuthError::Malformed(format!(
                "certificate names {:?}, not a spiffe://concord/ identity",
                crate::error::quote(uri)
            ))
        })?;
        Self::parse(name)
    }

    /// The one principal that may register `service` and serves under its name, for the
    /// services a role owns (shop, aggregator, gateway); `None` for the predictor service
    /// (every node registers it under its own [`Principal::Node`]) and for unknown names.
    /// The registry's authorization, the gateway's dialling and the test helpers all ask
    /// this, so the mapping is written once.
    pub fn for_service(service: &str) -> Option<Self> {
        match service {
            SHOP_SERVICE => Some(Self::Shop),
            AGGREGATOR_SERVICE => Some(Self::Aggregator),
            GATEWAY_SERVICE => Some(Self::Gateway),
            _ => None,
        }
    }

    /// The node id, for a node.
    pub fn node_id(&self) -> Option<&str> {
        match self {
            Self::Node(id) => Some(id),
            _ => None,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Whether `id` can be a node id: 1..=64 bytes of `[A-Za-z0-9._-]`.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The secret every credential derives from. Never sent over the wire.
#[derive(Clone)]
pub struct ClusterSecret(String);

impl ClusterSecret {
    /// Wraps a secret; it must not be empty.
    pub fn new(secret: impl Into<String>) -> Result<Self, AuthError> {
        let secret = secret.into();
        if secret.trim().is_empty() {
            return Err(AuthError::Malformed(
                "the cluster secret is empty".to_owned(),
            ));
        }
        Ok(Self(secret))
    }

    /// Issues `principal`'s credential.
    pub fn issue(&self, principal: Principal) -> Credential {
        let token = mac(&self.0, &principal);
        Credential { principal, token }
    }

    /// Whether `token` is `principal`'s credential (constant-time).
    pub fn verifies(&self, principal: &Principal, token: &str) -> bool {
        verify_mac(&self.0, principal, token)
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// The keyed MAC over `principal`'s name, before it is finalized.
fn keyed(secret: &str, principal: &Principal) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(MAC_CONTEXT.as_bytes());
    mac.update(principal.name().as_bytes());
    mac
}

/// `principal`'s credential MAC under `secret`, hex-encoded.
pub(crate) fn mac(secret: &str, principal: &Principal) -> String {
    hex::encode(keyed(secret, principal).finalize().into_bytes())
}

/// Whether `token` is `principal`'s MAC under `secret` in the lowercase hex
/// [`ClusterSecret::issue`] writes, by `hmac`'s own constant-time verify (a token in
/// another form is not it).
pub(crate) fn verify_mac(secret: &str, principal: &Principal, token: &str) -> bool {
    !token.bytes().any(|b| b.is_ascii_uppercase())
        && hex::decode(token).is_ok_and(|tag| keyed(secret, principal).verify_slice(&tag).is_ok())
}

/// A principal and the MAC that proves it: what one process holds to speak for itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    principal: Principal,
    token: String,
}

impl Credential {
    /// Parses `<principal>:<hex>` (the form [`Credential::encode`] writes, the value of
    /// `CONCORD_CREDENTIAL` and of the metadata header).
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let (name, token) = text.trim().rsplit_once(':').ok_or_else(|| {
            AuthError::Malformed("a credential is <principal>:<hex>, e.g. node/node-1:3fa4…".into())
        })?;
        let principal = Principal::parse(name)?;
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::Malformed(
                "a credential's MAC is 64 hex digits".to_owned(),
            ));
        }
        Ok(Self {
            principal,
            token: token.to_ascii_lowercase(),
        })
    }

    /// `<principal>:<hex>`.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.principal.name(), self.token)
    }

    /// Whom this credential speaks for.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The MAC alone (64 hex digits).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Adds this credential to an outgoing request's metadata.
    pub fn attach<T>(&self, request: &mut tonic::Request<T>) {
        self.attach_to(request.metadata_mut());
    }

    /// Adds this credential to `metadata`.
    pub fn attach_to(&self, metadata: &mut MetadataMap) {
        match MetadataValue::try_from(self.encode()) {
            Ok(value) => {
                metadata.insert(CREDENTIAL_HEADER, value);
            }
            Err(_) => tracing::warn!("credential is not valid metadata; request sent without it"),
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}:<redacted>)", self.principal)
    }
}

/// What a server can check credentials against.
#[derive(Clone, Debug)]
pub enum Verifier {
    /// The cluster secret: any principal's credential can be checked.
    Secret(ClusterSecret),
    /// Only the server's own credential: a caller is recognised only as the same principal
    /// (a shop checking that its peer is a shop), everyone else is refused.
    Own(Credential),
}

impl Verifier {
    fn verifies(&self, presented: &Credential) -> bool {
        match self {
            Self::Secret(secret) => secret.verifies(&presented.principal, &presented.token),
            Self::Own(own) => {
                own.principal == presented.principal
                    && crate::auth::constant_time_eq(
                        own.token.as_bytes(),
                        presented.token.as_bytes(),
                    )
            }
        }
    }
}

/// The principal a request proves, from its credential header.
///
/// `UNAUTHENTICATED` (via [`AuthError`]) when there is no credential, it is malformed, or it
/// does not verify.
pub fn authenticate_metadata(
    metadata: &MetadataMap,
    verifier: &Verifier,
) -> Result<Principal, AuthError> {
    let value = metadata
        .get(CREDENTIAL_HEADER)
        .ok_or(AuthError::MissingCredential)?
        .to_str()
        .map_err(|_| AuthError::Malformed("the credential header is not ASCII".to_owned()))?;
    let presented = Credential::parse(value)?;
    if verifier.verifies(&presented) {
        Ok(presented.principal)
    } else {
        Err(AuthError::Invalid)
    }
}

/// The principal a request proves: the one its client certificate names when the
/// connection is mutual TLS, else the one its credential header proves.
///
/// This is the one entry point servers call. See [`authenticate_parts`].
pub fn authenticate<T>(
    request: &tonic::Request<T>,
    verifier: &Verifier,
) -> Result<Principal, AuthError> {
    let peer_certs = request.peer_certs();
    authenticate_parts(
        request.metadata(),
        peer_certs.as_deref().map(Vec::as_slice),
        verifier,
    )
}

/// [`authenticate`] over its parts: the request's metadata and the client's certificate
/// chain (leaf first) when the connection is mutual TLS.
///
/// With a certificate, the principal is its SPIFFE id (rustls has verified the chain
/// against the cluster CA before any request arrives) and `verifier` is not consulted; a
/// credential header sent as well must name the same principal, else `PERMISSION_DENIED`
/// (its MAC is not checked: the certificate is the proof, and a shop holding only its own
/// credential could not check another principal's anyway). Without a certificate, the
/// credential header is the proof ([`authenticate_metadata`]).
pub fn authenticate_parts(
    metadata: &MetadataMap,
    peer_certs: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    verifier: &Verifier,
) -> Result<Principal, AuthError> {
    let Some(leaf) = peer_certs.and_then(<[_]>::first) else {
        return authenticate_metadata(metadata, verifier);
    };
    let principal = crate::tls::principal_of_certificate(leaf)?;
    if let Some(value) = metadata.get(CREDENTIAL_HEADER) {
        let value = value
            .to_str()
            .map_err(|_| AuthError::Malformed("the credential header is not ASCII".to_owned()))?;
        let claimed = Credential::parse(value)?;
        if claimed.principal != principal {
            return Err(AuthError::Forbidden(format!(
                "the credential names {} but the client certificate names {principal}",
                claimed.principal
            )));
        }
    }
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> ClusterSecret {
        ClusterSecret::new("s3cret").expect("secret")
    }

    /// Each role-owned service maps to its one principal; the predictor service and unknown
    /// names map to none.
    #[test]
    fn principal_for_service_table() {
        let cases = [
            (SHOP_SERVICE, Some(Principal::Shop)),
            (AGGREGATOR_SERVICE, Some(Principal::Aggregator)),
            (GATEWAY_SERVICE, Some(Principal::Gateway)),
            (PREDICTOR_SERVICE, None),
            ("registry", None),
            ("elsewhere", None),
        ];
        for (service, want) in cases {
            assert_eq!(Principal::for_service(service), want, "{service}");
        }
    }

    /// A node's MAC verifies through `hmac`, and a wrong, truncated or non-hex one does not.
    #[test]
    fn mac_verification() {
        let node = Principal::Node("n1".into());
        let good = mac("s3cret", &node);
        assert!(verify_mac("s3cret", &node, &good));
        assert!(!verify_mac("other", &node, &good));
        assert!(!verify_mac("s3cret", &Principal::Shop, &good));
        assert!(!verify_mac("s3cret", &node, &good[..good.len() - 2]));
        assert!(!verify_mac("s3cret", &node, "not hex"));
        assert!(
            !verify_mac("s3cret", &node, &good.to_uppercase()),
            "only the issued form"
        );
        assert_eq!(crate::auth::node_credential("s3cret", "n1"), good);
    }

    /// Principal names round-trip, and nothing outside the grammar parses.
    #[test]
    fn principal_names() {
        for principal in [
            Principal::Shop,
            Principal::Aggregator,
            Principal::Gateway,
            Principal::Registry,
            Principal::Node("node-1".into()),
        ] {
            assert_eq!(Principal::parse(&principal.name()), Ok(principal.clone()));
            assert_eq!(
                Principal::from_spiffe_id(&principal.spiffe_id()),
                Ok(principal)
            );
        }
        for bad in [
            "",
            "admin",
            "node/",
            "node/a b",
            "node/a:b",
            "Shop",
            "spiffe://x/shop",
        ] {
            assert!(Principal::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Principal::from_spiffe_id("spiffe://other/shop").is_err());
        assert!(Principal::parse(&format!("node/{}", "x".repeat(65))).is_err());
    }

    /// A credential verifies for its principal only, under its secret only.
    #[test]
    fn credentials_verify_for_their_principal_only() {
        let node1 = secret().issue(Principal::Node("node-1".into()));
        let parsed = Credential::parse(&node1.encode()).expect("parse");
        assert_eq!(parsed, node1);
        let mut metadata = MetadataMap::new();
        node1.attach_to(&mut metadata);
        let by_secret = Verifier::Secret(secret());
        assert_eq!(
            authenticate_metadata(&metadata, &by_secret),
            Ok(Principal::Node("node-1".into()))
        );
        // The same MAC presented as another principal.
        let forged = format!("node/node-2:{}", node1.token());
        metadata.insert(CREDENTIAL_HEADER, forged.parse().expect("ascii"));
        assert_eq!(
            authenticate_metadata(&metadata, &by_secret),
            Err(AuthError::Invalid)
        );
        // Another secret.
        node1.attach_to(&mut metadata);
        let other = Verifier::Secret(ClusterSecret::new("other").expect("secret"));
        assert_eq!(
            authenticate_metadata(&metadata, &other),
            Err(AuthError::Invalid)
        );
        // Nothing sent.
        assert_eq!(
            authenticate_metadata(&MetadataMap::new(), &by_secret),
            Err(AuthError::MissingCredential)
        );
    }

    /// A process holding only its own credential recognises the same principal only.
    #[test]
    fn own_credential_recognises_its_peer_only() {
        let shop = secret().issue(Principal::Shop);
        let verifier = Verifier::Own(shop.clone());
        let mut metadata = MetadataMap::new();
        shop.attach_to(&mut metadata);
        assert_eq!(
            authenticate_metadata(&metadata, &verifier),
            Ok(Principal::Shop)
        );
        secret().issue(Principal::Gateway).attach_to(&mut metadata);
        assert_eq!(
            authenticate_metadata(&metadata, &verifier),
            Err(AuthError::Invalid)
        );
    }

    /// Role credentials and node credentials never coincide, whatever the node is called.
    #[test]
    fn node_ids_cannot_yield_role_credentials() {
        let secret = secret();
        let shop = secret.issue(Principal::Shop);
        assert!(!secret.verifies(&Principal::Node("shop".into()), shop.token()));
        assert_ne!(
            secret.issue(Principal::Node("shop".into())).token(),
            shop.token()
        );
    }

    /// With a client certificate the principal is the certificate's; a credential header
    /// must agree with it (PERMISSION_DENIED otherwise), and a certificate without a
    /// Concord identity is refused even with a valid credential.
    #[test]
    fn client_certificates_name_the_principal() {
        use crate::tls::test::TestCa;
        let ca = TestCa::new();
        let node1 = Principal::Node("node-1".into());
        let node1_cert = ca.issue(&node1).der;
        let anonymous_cert = ca
            .issue_sans(vec![rcgen::SanType::DnsName(
                "node-1.node.concord".try_into().expect("ia5"),
            )])
            .der;
        let by_secret = Verifier::Secret(secret());
        let with = |credential: Option<&Credential>| {
            let mut metadata = MetadataMap::new();
            if let Some(credential) = credential {
                credential.attach_to(&mut metadata);
            }
            metadata
        };
        let node1_credential = secret().issue(node1.clone());
        let node2_credential = secret().issue(Principal::Node("node-2".into()));
        let forged = Credential::parse(&format!("shop:{}", "0".repeat(64))).expect("parse");
        let cases: Vec<(&str, MetadataMap, Option<_>, Result<Principal, AuthError>)> =
            vec![
            ("certificate alone", with(None), Some(&node1_cert), Ok(node1.clone())),
            (
                "certificate and its own credential",
                with(Some(&node1_credential)),
                Some(&node1_cert),
                Ok(node1.clone()),
            ),
            (
                "certificate and another node's valid credential",
                with(Some(&node2_credential)),
                Some(&node1_cert),
                Err(AuthError::Forbidden(
                    "the credential names node/node-2 but the client certificate names node/node-1"
                        .into(),
                )),
            ),
            (
                "certificate and a forged role credential",
                with(Some(&forged)),
                Some(&node1_cert),
                Err(AuthError::Forbidden(
                    "the credential names shop but the client certificate names node/node-1"
                        .into(),
                )),
            ),
            (
                "no certificate: the credential decides",
                with(Some(&node2_credential)),
                None,
                Ok(Principal::Node("node-2".into())),
            ),
        ];
        for (case, metadata, cert, want) in cases {
            let chain = cert.map(std::slice::from_ref);
            assert_eq!(
                authenticate_parts(&metadata, chain, &by_secret),
                want,
                "{case}"
            );
        }
        let refused = authenticate_parts(
            &with(Some(&node1_credential)),
            Some(std::slice::from_ref(&anonymous_cert)),
            &by_secret,
        );
        assert!(
            matches!(refused, Err(AuthError::Malformed(_))),
            "{refused:?}"
        );
    }

    /// Malformed credentials are refused with a message, not a panic.
    #[test]
    fn malformed_credentials() {
        for bad in [
            "",
            "shop",
            "shop:",
            "shop:xyz",
            &format!("nobody:{}", "a".repeat(64)),
        ] {
            assert!(Credential::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ClusterSecret::new("  ").is_err());
    }
}
