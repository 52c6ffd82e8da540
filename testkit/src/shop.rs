//! The real shop in the test's process, and the client calls every shop test makes.
//!
//! [`TestShop`] is one shop served on `127.0.0.1:0` (or a given address) over a data
//! directory: a caller's, so a test can stop a shop and start another on the same data, or
//! a fresh tempdir the guard owns. Every test shop shares [`ADMIN`], [`SESSION_KEY`] and the
//! shop credential, as the shops of one cluster do, so sessions survive a failover between
//! them. The request helpers ([`admin`], [`as_user`], [`sign_up`], …) are used by the
//! in-process tests and by the end-to-end tests against `concord shop` processes alike.

use std::{net::SocketAddr, path::Path, path::PathBuf, time::Duration};

use concord::identity::{Credential, Principal};
use concord::pb::registry::v1::{registry_client::RegistryClient, Instance, ResolveRequest};
use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::replication_client::ReplicationClient;
use concord::pb::shop::v1::shop_client::ShopClient;
use concord_shop::{Config, ReplicationConfig, ReplicationMode};
use tonic::transport::Channel;

use crate::Running;

/// The Shop client the tests use.
pub type Client = ShopClient<Channel>;

/// Admin token of every test shop (in-process or a `concord shop` process).
pub const ADMIN: &str = "test-admin-token";

/// Session key every test shop signs with (so sessions survive a failover between them).
pub const SESSION_KEY: &str = "test-session-key-test-session-key-0123";

/// Password every test account signs up with.
pub const PASSWORD: &str = "correct horse battery";

/// Lease of a [`registered`] shop: short, so a stopped primary's lease lapses quickly.
pub const LEASE_TTL: Duration = Duration::from_secs(1);

/// The shop credential every test shop holds (the test cluster secret's `shop`): shops
/// replicate only with each other.
pub fn shop_credential() -> Credential {
    crate::credential(Principal::Shop)
}

/// A running shop; [`TestShop::stop`] joins it, dropping it only signals shutdown.
pub struct TestShop {
    /// Bound address.
    pub addr: SocketAddr,
    /// Data directory (the caller's, or inside the tempdir this shop owns).
    pub data_dir: PathBuf,
    server: Running<concord_shop::ShopError>,
    /// The tempdir of a shop started without a caller's directory; removed after the stop.
    dir: Option<tempfile::TempDir>,
}

/// Starts a shop on `127.0.0.1:0` over `data_dir`, holding [`shop_credential`];
/// `configure` adjusts the test defaults (data dir, [`ADMIN`], [`SESSION_KEY`] already set).
pub async fn start(data_dir: &Path, configure: impl FnOnce(&mut Config)) -> TestShop {
    start_on(crate::local(), data_dir, configure).await
}

/// Like [`start`] on `addr`: a restart where clients already look, or port 0.
pub async fn start_on(
    addr: SocketAddr,
    data_dir: &Path,
    configure: impl FnOnce(&mut Config),
) -> TestShop {
    let mut config = Config::new(data_dir);
    config.admin_token = ADMIN.to_string();
    config.session_key = Some(SESSION_KEY.to_string());
    config.credential = Some(shop_credential());
    configure(&mut config);
    let server = Running::spawn_on(addr, |listener, shutdown| {
        concord_shop::serve(config, listener, shutdown)
    })
    .await;
    TestShop {
        addr: server.addr,
        data_dir: data_dir.to_path_buf(),
        server,
        dir: None,
    }
}

/// Like [`start_on`] over a fresh tempdir the returned shop owns.
pub async fn start_in_tempdir(addr: SocketAddr, configure: impl FnOnce(&mut Config)) -> TestShop {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shop = start_on(addr, &dir.path().join("shop"), configure).await;
    shop.dir = Some(dir);
    shop
}

impl TestShop {
    /// A Shop client on a fresh channel.
    pub fn client(&self) -> Client {
        ShopClient::new(self.channel())
    }

    /// A Replication client.
    pub fn replication(&self) -> ReplicationClient<Channel> {
        ReplicationClient::new(self.channel())
    }

    /// A lazy channel to this shop.
    pub fn channel(&self) -> Channel {
        crate::channel(self.addr)
    }

    /// Cancels the shop without a clean shutdown: a crash, as far as its peers can tell.
    /// Returns the tempdir the shop owned (if any), so its files outlive the crash for as
    /// long as the caller keeps it.
    #[must_use = "dropping the tempdir removes the crashed shop's files at once"]
    pub fn abort(self) -> Option<tempfile::TempDir> {
        self.server.abort();
        self.dir
    }

    /// Signals shutdown and waits for `serve` to return (then removes an owned tempdir).
    pub async fn stop(self) {
        self.server.stop().await;
    }

    /// The shop's replication status.
    pub async fn status(&self) -> pb::GetReplicationStatusResponse {
        self.replication()
            .get_replication_status(pb::GetReplicationStatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// The shop's last committed LSN.
    pub async fn last_lsn(&self) -> u64 {
        self.status().await.last_lsn
    }
}

/// Config for a shop registered with `registry`: [`LEASE_TTL`] (fast failover), async.
pub fn registered(registry: SocketAddr) -> impl Fn(&mut Config) + Copy {
    move |c| {
        c.registry_addr = Some(registry.to_string());
        c.lease_ttl = LEASE_TTL;
        c.replication.mode = ReplicationMode::Async;
    }
}

/// A replication config following `primary` (a replica that refuses writes, naming it).
pub fn replica_of(primary: &str) -> ReplicationConfig {
    ReplicationConfig {
        mode: ReplicationMode::Async,
        primary_addr: Some(primary.to_owned()),
        replica_id: "replica-1".into(),
        ..Default::default()
    }
}

/// The live `shop` instances the registry at `registry` resolves (none when it does not
/// answer).
pub async fn shop_instances(registry: SocketAddr) -> Vec<Instance> {
    RegistryClient::new(crate::channel(registry))
        .resolve(ResolveRequest {
            service: "shop".into(),
        })
        .await
        .map(|r| r.into_inner().instances)
        .unwrap_or_default()
}

/// Addresses of the live shop instances registered at `registry` as `role=primary`.
pub async fn primaries(registry: SocketAddr) -> Vec<String> {
    shop_instances(registry)
        .await
        .into_iter()
        .filter(|i| i.metadata.get("role").map(String::as_str) == Some("primary"))
        .map(|i| i.address)
        .collect()
}

/// A request carrying `token` as its bearer.
pub fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    concord::auth::attach_bearer(&mut request, token);
    request
}

/// Wraps a message with the admin bearer token.
pub fn admin<T>(message: T) -> tonic::Request<T> {
    with_bearer(message, ADMIN)
}

/// A signed-in customer: the account's id and a session token.
#[derive(Debug, Clone)]
pub struct User {
    /// `Account.user_id` (`u-…`).
    pub id: String,
    /// Session token (JWT).
    pub token: String,
}

/// Wraps a message with `user`'s session token.
pub fn as_user<T>(user: &User, message: T) -> tonic::Request<T> {
    with_bearer(message, &user.token)
}

/// Signs `username` up (and so in) with [`PASSWORD`], or the error status.
pub async fn try_sign_up(client: &mut Client, username: &str) -> Result<User, tonic::Status> {
    let reply = client
        .sign_up(pb::SignUpRequest {
            username: username.into(),
            password: PASSWORD.into(),
        })
        .await?
        .into_inner();
    Ok(User {
        id: reply.account.map(|a| a.user_id).unwrap_or_default(),
        token: reply.session.map(|s| s.token).unwrap_or_default(),
    })
}

/// Signs `username` up (and so in); panics on an error status.
pub async fn sign_up(client: &mut Client, username: &str) -> User {
    let user = try_sign_up(client, username).await.expect("sign up");
    assert!(!user.id.is_empty(), "sign-up reply without an account");
    assert!(!user.token.is_empty(), "sign-up reply without a session");
    user
}

/// A create request with defaults.
pub fn new_product(name: &str, price_minor: i64, stock: i64) -> pb::CreateProductRequest {
    pb::CreateProductRequest {
        name: name.into(),
        description: String::new(),
        price_minor,
        currency: "EUR".into(),
        stock,
    }
}

/// A product worth 1.00 EUR with `stock` units.
pub fn product(name: &str, stock: i64) -> pb::CreateProductRequest {
    new_product(name, 100, stock)
}

/// Creates a product and returns it.
pub async fn create(client: &mut Client, name: &str, price: i64, stock: i64) -> pb::Product {
    client
        .create_product(admin(new_product(name, price, stock)))
        .await
        .expect("create product")
        .into_inner()
        .product
        .expect("product")
}

/// Reads a product; panics on an error status.
pub async fn get_product(client: &mut Client, id: String) -> pb::Product {
    client
        .get_product(pb::GetProductRequest { id })
        .await
        .expect("get product")
        .into_inner()
        .product
        .expect("a product in the reply")
}

/// Adds `quantity` of a product to `user`'s cart; panics on an error status.
pub async fn add_to_cart(
    client: &mut Client,
    user: &User,
    product_id: String,
    quantity: i64,
) -> pb::AddCartItemResponse {
    client
        .add_cart_item(as_user(
            user,
            pb::AddCartItemRequest {
                user_id: user.id.clone(),
                product_id,
                quantity,
            },
        ))
        .await
        .expect("add to cart")
        .into_inner()
}

/// Places `user`'s cart as an order under `idempotency_key`; panics on failure.
pub async fn place_order(client: &mut Client, user: &User, idempotency_key: String) -> pb::Order {
    client
        .place_order(as_user(
            user,
            pb::PlaceOrderRequest {
                user_id: user.id.clone(),
                idempotency_key,
            },
        ))
        .await
        .expect("place order")
        .into_inner()
        .order
        .expect("order in reply")
}

/// Fetches an order that must exist, with the admin token.
pub async fn get_order(client: &mut Client, order_id: String) -> pb::Order {
    client
        .get_order(admin(pb::GetOrderRequest { order_id }))
        .await
        .expect("get order")
        .into_inner()
        .order
        .expect("order in reply")
}

/// A user's orders (first page of 10, newest first), read with `token` (the user's
/// session or the admin token); panics on an error status.
pub async fn orders_of(client: &mut Client, user: &str, token: &str) -> Vec<pb::Order> {
    client
        .list_orders(with_bearer(
            pb::ListOrdersRequest {
                user_id: user.to_string(),
                page_size: 10,
                page_token: String::new(),
            },
            token,
        ))
        .await
        .expect("list orders")
        .into_inner()
        .orders
}
