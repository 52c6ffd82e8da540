//! `concord shop` killed with SIGKILL during a concurrent write loop, restarted on the same
//! data directory: every acknowledged write is there (accounts included: each order's
//! customer reads it back with the session issued before the kill) and no order is
//! half-applied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::replication_client::ReplicationClient;
use concord::pb::shop::v1::shop_client::ShopClient;
use concord_testkit::process::Process;
use concord_testkit::shop;
use concord_testkit::shop::{product, try_sign_up, User};
use tonic::transport::Channel;

const ADMIN: &str = "crash-test-admin";
const WORKERS: usize = 8;
const INITIAL_STOCK: i64 = 1_000_000;
const LOOP_TIME: Duration = Duration::from_millis(1500);

fn start_shop(dir: &std::path::Path) -> Process {
    let dir = dir.to_str().expect("utf-8 temp path");
    Process::spawn(&[
        "shop",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir,
        "--admin-token",
        ADMIN,
        "--session-key",
        shop::SESSION_KEY,
    ])
}

fn admin<T>(message: T) -> tonic::Request<T> {
    shop::with_bearer(message, ADMIN)
}

fn channel(shop: &Process) -> Channel {
    concord::grpc::lazy_channel(&shop.addr.to_string()).expect("channel")
}

/// What the clients were told succeeded.
#[derive(Default)]
struct Acked {
    products: HashMap<String, String>,
    orders: HashMap<String, (String, String)>,
    /// (user id, session token) of every acknowledged sign-up.
    users: Vec<(String, String)>,
    max_lsn: u64,
}

async fn write_loop(
    mut c: ShopClient<Channel>,
    worker: usize,
    hot: String,
    acked: Arc<Mutex<Acked>>,
) {
    for i in 0.. {
        let name = format!("w{worker}-{i}");
        let Ok(created) = c.create_product(admin(product(&name, 1))).await else {
            return; // the server died
        };
        let created = created.into_inner();
        {
            let mut a = acked.lock().expect("lock");
            a.products
                .insert(created.product.expect("product").id, name);
            a.max_lsn = a.max_lsn.max(created.write.expect("write").lsn);
        }
        let Ok(User { id: user, token }) = try_sign_up(&mut c, &format!("user-{worker}-{i}")).await
        else {
            return;
        };
        acked
            .lock()
            .expect("lock")
            .users
            .push((user.clone(), token.clone()));
        let add = pb::AddCartItemRequest {
            user_id: user.clone(),
            product_id: hot.clone(),
            quantity: 1 + (i % 3),
        };
        if c.add_cart_item(shop::with_bearer(add, &token))
            .await
            .is_err()
        {
            return;
        }
        let place = pb::PlaceOrderRequest {
            user_id: user.clone(),
            idempotency_key: "k".into(),
        };
        let Ok(placed) = c.place_order(shop::with_bearer(place, &token)).await else {
            return;
        };
        let placed = placed.into_inner();
        let mut a = acked.lock().expect("lock");
        a.orders
            .insert(placed.order.expect("order").id, (user, token));
        a.max_lsn = a.max_lsn.max(placed.write.expect("write").lsn);
    }
}

/// The scenario in the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shop_survives_kill_9_without_losing_acknowledged_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let mut shop = tokio::task::spawn_blocking(move || start_shop(&path))
        .await
        .expect("start");
    let mut client = ShopClient::new(channel(&shop));
    let hot = client
        .create_product(admin(product("Hot item", INITIAL_STOCK)))
        .await
        .expect("create hot item")
        .into_inner()
        .product
        .expect("product");

    let acked = Arc::new(Mutex::new(Acked::default()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            tokio::spawn(write_loop(
                ShopClient::new(channel(&shop)),
                w,
                hot.id.clone(),
                Arc::clone(&acked),
            ))
        })
        .collect();
    tokio::time::sleep(LOOP_TIME).await;
    shop.kill9();
    for w in workers {
        w.await.expect("worker");
    }
    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    assert!(
        acked.orders.len() > 10,
        "the loop made progress before the kill ({} orders)",
        acked.orders.len()
    );

    let path = dir.path().to_path_buf();
    let shop = tokio::task::spawn_blocking(move || start_shop(&path))
        .await
        .expect("restart");
    let mut c = ShopClient::new(channel(&shop));
    let last_lsn = ReplicationClient::new(channel(&shop))
        .get_replication_status(pb::GetReplicationStatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .last_lsn;
    assert!(
        last_lsn >= acked.max_lsn,
        "last LSN {last_lsn} < acknowledged {}",
        acked.max_lsn
    );
    for (id, name) in &acked.products {
        let got = c
            .get_product(pb::GetProductRequest { id: id.clone() })
            .await
            .expect("acknowledged product survives");
        assert_eq!(&got.into_inner().product.expect("product").name, name);
    }
    for (id, (user, token)) in &acked.orders {
        let got = c
            .get_order(shop::with_bearer(
                pb::GetOrderRequest {
                    order_id: id.clone(),
                },
                token,
            ))
            .await
            .expect("acknowledged order survives");
        assert_eq!(&got.into_inner().order.expect("order").user_id, user);
    }
    // No half-applied order: an order exists iff its cart was cleared, and the hot item's
    // stock fell by exactly the units ordered.
    let mut ordered_units = 0;
    for (user, token) in &acked.users {
        let orders = shop::orders_of(&mut c, user, ADMIN).await;
        assert!(orders.len() <= 1, "{user} has {} orders", orders.len());
        let cart = c
            .get_cart(shop::with_bearer(
                pb::GetCartRequest {
                    user_id: user.clone(),
                },
                token,
            ))
            .await
            .expect("cart")
            .into_inner()
            .cart
            .expect("cart");
        if let Some(order) = orders.first() {
            assert!(
                cart.lines.is_empty(),
                "{user}: order placed but cart not cleared"
            );
            ordered_units += order.lines.iter().map(|l| l.quantity).sum::<i64>();
        }
    }
    let stock = c
        .get_product(pb::GetProductRequest { id: hot.id.clone() })
        .await
        .expect("hot item")
        .into_inner()
        .product
        .expect("product")
        .stock;
    assert_eq!(
        stock + ordered_units,
        INITIAL_STOCK,
        "stock and orders disagree"
    );
}
