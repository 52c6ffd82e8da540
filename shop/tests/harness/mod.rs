//! The one test harness: a shop served on 127.0.0.1:0 over a fresh temp dir; the test
//! stops it through a oneshot and joins `serve` with [`TestShop::stop`].

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::replication_client::ReplicationClient;
use concord::pb::shop::v1::shop_client::ShopClient;
use concord_shop::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The Shop client the tests use.
pub type Client = ShopClient<Channel>;

/// Admin token used by every test server.
pub const ADMIN: &str = "test-admin-token";

/// Session key every test shop signs with (so sessions survive a failover between them).
pub const SESSION_KEY: &str = "test-session-key-test-session-key-0123";

/// The shop credential every test shop holds (the test cluster secret's `shop`).
pub fn shop_credential() -> concord::identity::Credential {
    concord_testkit::credential(concord::identity::Principal::Shop)
}

/// A running shop.
pub struct TestShop {
    /// Bound address.
    pub addr: SocketAddr,
    /// Data directory (kept alive by the test when restarting on it).
    pub data_dir: std::path::PathBuf,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<concord_shop::Result<()>>>,
}

/// Starts a shop holding [`shop_credential`]; `configure` adjusts the default config (data
/// dir already set).
pub async fn start(data_dir: &std::path::Path, configure: impl FnOnce(&mut Config)) -> TestShop {
    concord::telemetry::init_for_tests();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = Config::new(data_dir);
    config.admin_token = ADMIN.to_string();
    config.session_key = Some(SESSION_KEY.to_string());
    config.credential = Some(shop_credential());
    configure(&mut config);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(concord_shop::serve(config, listener, async move {
        let _ = stop_rx.await;
    }));
    TestShop {
        addr,
        data_dir: data_dir.to_path_buf(),
        stop_tx: Some(stop_tx),
        task: Some(task),
    }
}

impl TestShop {
    /// A Shop client on a fresh channel.
    pub fn client(&self) -> ShopClient<Channel> {
        ShopClient::new(self.channel())
    }

    /// A Replication client.
    pub fn replication(&self) -> ReplicationClient<Channel> {
        ReplicationClient::new(self.channel())
    }

    /// A lazy channel to this shop.
    pub fn channel(&self) -> Channel {
        concord::grpc::lazy_channel(&self.addr.to_string()).expect("channel")
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("serve task").expect("serve result");
        }
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

/// Reads a product; panics on an error status.
pub async fn get_product(client: &mut ShopClient<Channel>, id: String) -> pb::Product {
    client
        .get_product(pb::GetProductRequest { id })
        .await
        .expect("get product")
        .into_inner()
        .product
        .expect("a product in the reply")
}

/// A signed-in customer: the account's id and a session token.
#[derive(Debug, Clone)]
pub struct User {
    /// `Account.user_id` (`u-…`).
    pub id: String,
    /// Session token (JWT).
    pub token: String,
}

/// Password every test account signs up with.
pub const PASSWORD: &str = "correct horse battery";

/// Signs `username` up (and so in); panics on an error status.
pub async fn sign_up(client: &mut ShopClient<Channel>, username: &str) -> User {
    let reply = client
        .sign_up(pb::SignUpRequest {
            username: username.into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("sign up")
        .into_inner();
    User {
        id: reply.account.expect("account").user_id,
        token: reply.session.expect("session").token,
    }
}

/// Wraps a message with `user`'s session token.
pub fn as_user<T>(user: &User, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    concord::auth::attach_bearer(&mut request, &user.token);
    request
}

/// Adds `quantity` of a product to `user`'s cart; panics on an error status.
pub async fn add_to_cart(
    client: &mut ShopClient<Channel>,
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

/// Wraps a message with the admin bearer token.
pub fn admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    concord::auth::attach_bearer(&mut request, ADMIN);
    request
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

/// Creates a product and returns it.
pub async fn create(
    client: &mut ShopClient<Channel>,
    name: &str,
    price: i64,
    stock: i64,
) -> pb::Product {
    client
        .create_product(admin(new_product(name, price, stock)))
        .await
        .expect("create product")
        .into_inner()
        .product
        .expect("product")
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Places `user`'s cart as an order under `idempotency_key`; panics on failure.
pub async fn place_order(
    client: &mut ShopClient<Channel>,
    user: &User,
    idempotency_key: String,
) -> pb::Order {
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
pub async fn get_order(client: &mut ShopClient<Channel>, order_id: String) -> pb::Order {
    client
        .get_order(admin(pb::GetOrderRequest { order_id }))
        .await
        .expect("get order")
        .into_inner()
        .order
        .expect("order in reply")
}

/// A registry served in-process until [`TestRegistry::stop`], for the failover tests.
pub struct TestRegistry {
    /// Bound address.
    pub addr: SocketAddr,
    stop_tx: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestRegistry {
    /// Serves a registry on 127.0.0.1:0.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::serve(listener)
    }

    /// Serves a registry on `listener` (a restart binds the old address again).
    pub fn serve(listener: tokio::net::TcpListener) -> Self {
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(concord_registry::serve(
            concord_registry::Config::new(concord_testkit::cluster_secret()),
            listener,
            async move {
                let _ = stop_rx.await;
            },
        ));
        Self {
            addr,
            stop_tx,
            task,
        }
    }

    /// Stops the registry and waits until it has.
    pub async fn stop(self) {
        let _ = self.stop_tx.send(());
        self.task.await.expect("registry task").expect("registry");
    }

    /// The live `shop` instances the registry resolves (none when it does not answer).
    pub async fn shop_instances(&self) -> Vec<concord::pb::registry::v1::Instance> {
        use concord::pb::registry::v1::{registry_client::RegistryClient, ResolveRequest};
        let Ok(channel) = concord::grpc::lazy_channel(&self.addr.to_string()) else {
            return Vec::new();
        };
        RegistryClient::new(channel)
            .resolve(ResolveRequest {
                service: "shop".into(),
            })
            .await
            .map(|r| r.into_inner().instances)
            .unwrap_or_default()
    }

    /// Addresses of the live instances registered as `role=primary`.
    pub async fn primaries(&self) -> Vec<String> {
        self.shop_instances()
            .await
            .into_iter()
            .filter(|i| i.metadata.get("role").map(String::as_str) == Some("primary"))
            .map(|i| i.address)
            .collect()
    }
}

/// Config for a shop registered with `registry`: 1 s lease TTL (fast failover), async.
pub fn registered(registry: SocketAddr) -> impl Fn(&mut Config) + Copy {
    move |c| {
        c.registry_addr = Some(registry.to_string());
        c.lease_ttl = Duration::from_secs(1);
        c.replication.mode = concord_shop::ReplicationMode::Async;
    }
}
