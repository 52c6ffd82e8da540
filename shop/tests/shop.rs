//! The Shop service over loopback gRPC: full flow, auth, idempotency, the oversell race,
//! the order state machine and a bad-input table.

use std::sync::Arc;

use concord::pb::shop::v1 as pb;
use concord_testkit::shop::{
    add_to_cart, admin, as_user, create, get_order, get_product, new_product, place_order, sign_up,
    start,
};
use tonic::Code;

/// Products, cart, order and status flow end to end, with increasing LSNs.
#[tokio::test]
async fn full_flow() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();

    let created = c
        .create_product(admin(new_product("Green tea", 450, 20)))
        .await
        .unwrap()
        .into_inner();
    let tea = created.product.unwrap();
    let write = created.write.unwrap();
    assert_eq!(write.lsn, 1);
    assert_eq!(write.term, 1);
    assert_eq!(tea.id, "p-000000000001");
    let mug = create(&mut c, "Mug", 1200, 5).await;
    for i in 0..10 {
        create(&mut c, &format!("Spoon {i}"), 100, 1).await;
    }

    let got = c
        .get_product(pb::GetProductRequest { id: tea.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.product.unwrap(), tea);
    let updated = c
        .update_product(admin(pb::UpdateProductRequest {
            id: tea.id.clone(),
            price_minor: Some(500),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.product.as_ref().unwrap().price_minor, 500);
    assert_eq!(updated.product.as_ref().unwrap().name, "Green tea");
    assert!(updated.write.unwrap().lsn > write.lsn);

    // Paging through 12 products, 5 at a time, then filtering.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_products(pb::ListProductsRequest {
                page_size: 5,
                page_token: token.clone(),
                name_contains: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.products.into_iter().map(|p| p.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names.len(), 12);
    let spoons = c
        .list_products(pb::ListProductsRequest {
            name_contains: "SPOON".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spoons.products.len(), 10);

    // Cart: merge, set, remove, totals at current prices.
    let alice = sign_up(&mut c, "alice").await;
    let user = alice.id.clone();
    add_to_cart(&mut c, &alice, tea.id.clone(), 1).await;
    add_to_cart(&mut c, &alice, tea.id.clone(), 2).await;
    let cart = add_to_cart(&mut c, &alice, mug.id.clone(), 1)
        .await
        .cart
        .unwrap();
    assert_eq!(cart.lines.len(), 2);
    assert_eq!(cart.lines[0].quantity, 3);
    assert_eq!(cart.total_minor, 3 * 500 + 1200);
    assert_eq!(cart.currency, "EUR");
    c.set_cart_item_quantity(as_user(
        &alice,
        pb::SetCartItemQuantityRequest {
            user_id: user.clone(),
            product_id: mug.id.clone(),
            quantity: 2,
        },
    ))
    .await
    .unwrap();
    add_to_cart(&mut c, &alice, "p-000000000003".into(), 1).await;
    c.remove_cart_item(as_user(
        &alice,
        pb::RemoveCartItemRequest {
            user_id: String::new(), // empty: the session's own
            product_id: "p-000000000003".into(),
        },
    ))
    .await
    .unwrap();
    let cart = c
        .get_cart(as_user(
            &alice,
            pb::GetCartRequest {
                user_id: user.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    assert_eq!(cart.total_minor, 3 * 500 + 2 * 1200);

    // Order: snapshot, stock decrement, cart cleared.
    let placed = c
        .place_order(as_user(
            &alice,
            pb::PlaceOrderRequest {
                user_id: user.clone(),
                idempotency_key: "checkout-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!placed.replayed);
    assert!(placed.write.unwrap().lsn > 0);
    let order = placed.order.unwrap();
    assert_eq!(order.total_minor, 3 * 500 + 2 * 1200);
    assert_eq!(order.status, pb::OrderStatus::Pending as i32);
    let tea_now = get_product(&mut c, tea.id.clone()).await;
    assert_eq!(tea_now.stock, 17);
    let cart = c
        .get_cart(admin(pb::GetCartRequest {
            user_id: user.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    assert!(cart.lines.is_empty());
    // A later price change does not touch the order.
    c.update_product(admin(pb::UpdateProductRequest {
        id: tea.id.clone(),
        price_minor: Some(9_999),
        ..Default::default()
    }))
    .await
    .unwrap();
    let fetched = get_order(&mut c, order.id.clone()).await;
    assert_eq!(fetched, order);
    let own = c
        .get_order(as_user(
            &alice,
            pb::GetOrderRequest {
                order_id: order.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.order.unwrap(), order);
    let listed = c
        .list_orders(as_user(
            &alice,
            pb::ListOrdersRequest {
                user_id: user.clone(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.orders, vec![order.clone()]);

    for status in [
        pb::OrderStatus::Paid,
        pb::OrderStatus::Shipped,
        pb::OrderStatus::Delivered,
    ] {
        let moved = c
            .update_order_status(admin(pb::UpdateOrderStatusRequest {
                order_id: order.id.clone(),
                status: status as i32,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(moved.order.unwrap().status, status as i32);
    }
    let err = c
        .update_order_status(admin(pb::UpdateOrderStatusRequest {
            order_id: order.id.clone(),
            status: pb::OrderStatus::Cancelled as i32,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("delivered") && err.message().contains("cancelled"),
        "{}",
        err.message()
    );

    c.delete_product(admin(pb::DeleteProductRequest { id: mug.id.clone() }))
        .await
        .unwrap();
    let err = c
        .get_product(pb::GetProductRequest { id: mug.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    shop.stop().await;
}

/// Product mutations need the admin token; without it nothing is written.
#[tokio::test]
async fn admin_token_required() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    let err = c.create_product(new_product("x", 1, 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(new_product("x", 1, 1));
    concord::auth::attach_bearer(&mut wrong, "nope");
    assert_eq!(
        c.create_product(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let err = c
        .delete_product(pb::DeleteProductRequest { id: "p-1".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(shop.last_lsn().await, 0);
    shop.stop().await;
}

/// Changing an order's status needs the admin token, like product mutations: no token or
/// a wrong one is UNAUTHENTICATED and the order stays as it was.
#[tokio::test]
async fn order_status_change_needs_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    let p = create(&mut c, "Tea", 300, 10).await;
    let eve = sign_up(&mut c, "eve").await;
    add_to_cart(&mut c, &eve, p.id.clone(), 1).await;
    let order = place_order(&mut c, &eve, "eve-1".into()).await;
    let lsn = shop.last_lsn().await;
    let paid = || pb::UpdateOrderStatusRequest {
        order_id: order.id.clone(),
        status: pb::OrderStatus::Paid as i32,
    };
    let err = c.update_order_status(paid()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(paid());
    concord::auth::attach_bearer(&mut wrong, "nope");
    let err = c.update_order_status(wrong).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = c
        .update_order_status(as_user(&eve, paid()))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "a customer's session is known but is no admin token"
    );
    assert_eq!(shop.last_lsn().await, lsn, "nothing written");
    let unchanged = get_order(&mut c, order.id.clone()).await;
    assert_eq!(unchanged.status, pb::OrderStatus::Pending as i32);

    let moved = c
        .update_order_status(admin(paid()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.order.unwrap().status, pb::OrderStatus::Paid as i32);
    shop.stop().await;
}

/// The same idempotency key returns the same order and writes nothing; with a different
/// cart it is FAILED_PRECONDITION.
#[tokio::test]
async fn place_order_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    let p = create(&mut c, "Tea", 300, 10).await;
    let bob = sign_up(&mut c, "bob").await;
    let add = |q| {
        as_user(
            &bob,
            pb::AddCartItemRequest {
                user_id: bob.id.clone(),
                product_id: p.id.clone(),
                quantity: q,
            },
        )
    };
    c.add_cart_item(add(2)).await.unwrap();
    let place = || {
        as_user(
            &bob,
            pb::PlaceOrderRequest {
                user_id: bob.id.clone(),
                idempotency_key: "k-1".into(),
            },
        )
    };
    let first = c.place_order(place()).await.unwrap().into_inner();
    let lsn = shop.last_lsn().await;
    let second = c.place_order(place()).await.unwrap().into_inner();
    assert!(second.replayed);
    let (first_write, second_write) = (first.write.unwrap(), second.write.unwrap());
    assert_eq!(
        (second_write.lsn, second_write.term),
        (first_write.lsn, first_write.term),
        "a replay reports the LSN and term the order was placed in"
    );
    assert_eq!(second.order, first.order);
    assert_eq!(shop.last_lsn().await, lsn, "a replay writes nothing");
    c.add_cart_item(add(1)).await.unwrap();
    let err = c.place_order(place()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let stock = get_product(&mut c, p.id.clone()).await.stock;
    assert_eq!(stock, 8, "only one order decremented stock");
    shop.stop().await;
}

/// A key reused for another cart is named in the refusal with at most 64 of its
/// characters, even at the longest allowed key (128 bytes).
#[tokio::test]
async fn reused_long_idempotency_key_is_quoted_within_bound() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    let p = create(&mut c, "Tea", 300, 10).await;
    let key = format!("{}{}", "a".repeat(64), "b".repeat(64));
    assert_eq!(key.len(), 128, "the longest key validation allows");
    let bob = sign_up(&mut c, "bob").await;
    let place = || {
        as_user(
            &bob,
            pb::PlaceOrderRequest {
                user_id: bob.id.clone(),
                idempotency_key: key.clone(),
            },
        )
    };
    add_to_cart(&mut c, &bob, p.id.clone(), 1).await;
    c.place_order(place()).await.unwrap();
    add_to_cart(&mut c, &bob, p.id.clone(), 2).await;
    let err = c.place_order(place()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&"a".repeat(64)), "{}", err.message());
    assert!(!err.message().contains("bb"), "{}", err.message());
    assert!(err.message().contains("(128 bytes)"), "{}", err.message());
    shop.stop().await;
}

/// 60 concurrent PlaceOrder calls from different signed-in users race for 10 units:
/// exactly 10 orders, stock 0, the rest FAILED_PRECONDITION.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversell_race() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    let hot = create(&mut c, "Limited edition", 9_900, 10).await;
    // 60, not 200: every racer signs up first, and each sign-up is one Argon2 hash.
    const RACERS: usize = 60;
    let mut users = Vec::new();
    for u in 0..RACERS {
        let user = sign_up(&mut c, &format!("user{u}")).await;
        add_to_cart(&mut c, &user, hot.id.clone(), 1).await;
        users.push(user);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let calls: Vec<_> = users
        .into_iter()
        .map(|user| {
            let mut c = c.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                c.place_order(as_user(
                    &user,
                    pb::PlaceOrderRequest {
                        user_id: user.id.clone(),
                        idempotency_key: "buy".into(),
                    },
                ))
                .await
            })
        })
        .collect();
    let mut won = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => won += 1,
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    assert_eq!(won, 10);
    let stock = get_product(&mut c, hot.id.clone()).await.stock;
    assert_eq!(stock, 0);
    shop.stop().await;
}

/// Every (from, to) pair of the order state machine over gRPC.
#[tokio::test]
async fn status_machine_table() {
    use pb::OrderStatus::*;
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    let p = create(&mut c, "Tea", 100, 1_000).await;
    let all = [Pending, Paid, Shipped, Delivered, Cancelled];
    let mut n = 0;
    for from in all {
        for to in all {
            n += 1;
            let user = sign_up(&mut c, &format!("user{n}")).await;
            add_to_cart(&mut c, &user, p.id.clone(), 1).await;
            let order = place_order(&mut c, &user, "k".into()).await;
            let path: &[pb::OrderStatus] = match from {
                Paid => &[Paid],
                Shipped => &[Paid, Shipped],
                Delivered => &[Paid, Shipped, Delivered],
                Cancelled => &[Cancelled],
                _ => &[],
            };
            for step in path {
                c.update_order_status(admin(pb::UpdateOrderStatusRequest {
                    order_id: order.id.clone(),
                    status: *step as i32,
                }))
                .await
                .unwrap();
            }
            let allowed = matches!(
                (from, to),
                (Pending, Paid)
                    | (Paid, Shipped)
                    | (Shipped, Delivered)
                    | (Pending, Cancelled)
                    | (Paid, Cancelled)
            );
            let result = c
                .update_order_status(admin(pb::UpdateOrderStatusRequest {
                    order_id: order.id.clone(),
                    status: to as i32,
                }))
                .await;
            match result {
                Ok(r) => {
                    assert!(allowed, "{from:?} -> {to:?} should fail");
                    assert_eq!(r.into_inner().order.unwrap().status, to as i32);
                }
                Err(s) => {
                    assert!(!allowed, "{from:?} -> {to:?} should succeed: {s:?}");
                    assert_eq!(s.code(), Code::FailedPrecondition);
                }
            }
        }
    }
    let stock = get_product(&mut c, p.id.clone()).await.stock;
    // 25 orders of 1 unit; cancelled ones gave theirs back: Cancelled-from-start (5 rows)
    // plus the allowed Pending→Cancelled and Paid→Cancelled moves.
    assert_eq!(stock, 1_000 - 25 + 5 + 2);
    let err = c
        .update_order_status(admin(pb::UpdateOrderStatusRequest {
            order_id: "o-000000000001".into(),
            status: Unspecified as i32,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    shop.stop().await;
}

/// Bad input gets a clear status and changes nothing (LSN unchanged, product intact).
#[tokio::test]
async fn bad_input_table() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    let p = create(&mut c, "Tea", 100, 3).await;
    let eve = sign_up(&mut c, "eve").await;
    let zed = sign_up(&mut c, "zed").await;
    add_to_cart(&mut c, &eve, p.id.clone(), 1).await;
    let lsn = shop.last_lsn().await;

    let id = p.id.clone();
    let eve_id = eve.id.clone();
    let add = |user: &str, product: &str, quantity: i64| {
        let user = if user == "eve" { eve_id.as_str() } else { user };
        as_user(
            &eve,
            pb::AddCartItemRequest {
                user_id: user.into(),
                product_id: product.into(),
                quantity,
            },
        )
    };
    let create_req =
        |name: &str, price: i64, stock: i64, currency: &str| pb::CreateProductRequest {
            name: name.into(),
            description: String::new(),
            price_minor: price,
            currency: currency.into(),
            stock,
        };
    let mut cases: Vec<(&str, Code, tonic::Status)> = Vec::new();
    macro_rules! case {
        ($label:expr, $code:expr, $call:expr) => {
            cases.push(($label, $code, $call.await.map(|_| ()).expect_err($label)));
        };
    }
    case!(
        "empty name",
        Code::InvalidArgument,
        c.create_product(admin(create_req("", 1, 1, "EUR")))
    );
    case!(
        "blank name",
        Code::InvalidArgument,
        c.create_product(admin(create_req("   ", 1, 1, "EUR")))
    );
    case!(
        "long name",
        Code::InvalidArgument,
        c.create_product(admin(create_req(&"x".repeat(201), 1, 1, "EUR")))
    );
    case!(
        "control char",
        Code::InvalidArgument,
        c.create_product(admin(create_req("a\u{7}b", 1, 1, "EUR")))
    );
    case!(
        "bidi override in name",
        Code::InvalidArgument,
        c.create_product(admin(create_req("Tea\u{202E}gpj.exe", 1, 1, "EUR")))
    );
    case!(
        "bidi isolate in description",
        Code::InvalidArgument,
        c.create_product(admin(pb::CreateProductRequest {
            description: "fine \u{2067}print".into(),
            ..create_req("ok", 1, 1, "EUR")
        }))
    );
    case!(
        "not an ISO 4217 currency",
        Code::InvalidArgument,
        c.create_product(admin(create_req("ok", 1, 1, "XXQ")))
    );
    case!(
        "negative price",
        Code::InvalidArgument,
        c.create_product(admin(create_req("ok", -1, 1, "EUR")))
    );
    case!(
        "absurd price",
        Code::InvalidArgument,
        c.create_product(admin(create_req("ok", 100_000_000_001, 1, "EUR")))
    );
    case!(
        "negative stock",
        Code::InvalidArgument,
        c.create_product(admin(create_req("ok", 1, -1, "EUR")))
    );
    case!(
        "bad currency",
        Code::InvalidArgument,
        c.create_product(admin(create_req("ok", 1, 1, "eur")))
    );
    case!(
        "update nothing",
        Code::InvalidArgument,
        c.update_product(admin(pb::UpdateProductRequest {
            id: id.clone(),
            ..Default::default()
        }))
    );
    case!(
        "update unknown",
        Code::NotFound,
        c.update_product(admin(pb::UpdateProductRequest {
            id: "p-999".into(),
            stock: Some(1),
            ..Default::default()
        }))
    );
    case!(
        "update malformed",
        Code::InvalidArgument,
        c.update_product(admin(pb::UpdateProductRequest {
            id: "tea".into(),
            stock: Some(1),
            ..Default::default()
        }))
    );
    case!(
        "get malformed",
        Code::InvalidArgument,
        c.get_product(pb::GetProductRequest { id: "".into() })
    );
    case!(
        "get unknown",
        Code::NotFound,
        c.get_product(pb::GetProductRequest {
            id: "p-424242".into()
        })
    );
    case!(
        "delete unknown",
        Code::NotFound,
        c.delete_product(admin(pb::DeleteProductRequest {
            id: "p-424242".into()
        }))
    );
    case!(
        "zero quantity",
        Code::InvalidArgument,
        c.add_cart_item(add("eve", &id, 0))
    );
    case!(
        "negative quantity",
        Code::InvalidArgument,
        c.add_cart_item(add("eve", &id, -1))
    );
    case!(
        "above stock",
        Code::FailedPrecondition,
        c.add_cart_item(add("eve", &id, 3))
    );
    case!(
        "huge quantity",
        Code::InvalidArgument,
        c.add_cart_item(add("eve", &id, i64::MAX))
    );
    case!(
        "unknown product",
        Code::NotFound,
        c.add_cart_item(add("eve", "p-777", 1))
    );
    case!(
        "malformed product",
        Code::InvalidArgument,
        c.add_cart_item(add("eve", "p-x", 1))
    );
    case!(
        "bad user",
        Code::PermissionDenied,
        c.add_cart_item(add("eve\n", &id, 1))
    );
    case!(
        "admin reads without a user",
        Code::InvalidArgument,
        c.get_cart(admin(pb::GetCartRequest {
            user_id: String::new()
        }))
    );
    case!(
        "set missing line",
        Code::NotFound,
        c.set_cart_item_quantity(as_user(
            &zed,
            pb::SetCartItemQuantityRequest {
                user_id: zed.id.clone(),
                product_id: id.clone(),
                quantity: 1
            }
        ))
    );
    case!(
        "remove missing line",
        Code::NotFound,
        c.remove_cart_item(as_user(
            &zed,
            pb::RemoveCartItemRequest {
                user_id: zed.id.clone(),
                product_id: id.clone()
            }
        ))
    );
    case!(
        "empty cart order",
        Code::FailedPrecondition,
        c.place_order(as_user(
            &zed,
            pb::PlaceOrderRequest {
                user_id: zed.id.clone(),
                idempotency_key: "k".into()
            }
        ))
    );
    case!(
        "empty key",
        Code::InvalidArgument,
        c.place_order(as_user(
            &eve,
            pb::PlaceOrderRequest {
                user_id: eve.id.clone(),
                idempotency_key: String::new()
            }
        ))
    );
    case!(
        "long key",
        Code::InvalidArgument,
        c.place_order(as_user(
            &eve,
            pb::PlaceOrderRequest {
                user_id: eve.id.clone(),
                idempotency_key: "k".repeat(129)
            }
        ))
    );
    case!(
        "unknown order",
        Code::NotFound,
        c.get_order(as_user(
            &eve,
            pb::GetOrderRequest {
                order_id: "o-5".into()
            }
        ))
    );
    case!(
        "malformed order",
        Code::InvalidArgument,
        c.get_order(as_user(
            &eve,
            pb::GetOrderRequest {
                order_id: "5".into()
            }
        ))
    );
    case!(
        "bad page token",
        Code::InvalidArgument,
        c.list_products(pb::ListProductsRequest {
            page_token: "zzz".into(),
            ..Default::default()
        })
    );
    case!(
        "bad orders token",
        Code::InvalidArgument,
        c.list_orders(as_user(
            &eve,
            pb::ListOrdersRequest {
                user_id: eve.id.clone(),
                page_size: 1,
                page_token: "p-1".into()
            }
        ))
    );
    // Huge values: refused, and never echoed back whole (a 16 KB header limit must do).
    let huge = "9".repeat(3 * 1024 * 1024);
    case!(
        "huge order id",
        Code::InvalidArgument,
        c.get_order(as_user(
            &eve,
            pb::GetOrderRequest {
                order_id: format!("o-{huge}")
            }
        ))
    );
    case!(
        "huge page token",
        Code::InvalidArgument,
        c.list_products(pb::ListProductsRequest {
            page_token: huge.clone(),
            ..Default::default()
        })
    );
    case!(
        "huge product id",
        Code::InvalidArgument,
        c.add_cart_item(add("eve", &huge, 1))
    );
    case!(
        "huge user id",
        Code::InvalidArgument,
        c.get_cart(admin(pb::GetCartRequest {
            user_id: huge.clone()
        }))
    );
    case!(
        "huge currency",
        Code::InvalidArgument,
        c.create_product(admin(create_req("ok", 1, 1, &huge)))
    );
    case!(
        "huge filter",
        Code::InvalidArgument,
        c.list_products(pb::ListProductsRequest {
            name_contains: huge.clone(),
            ..Default::default()
        })
    );
    let named = [
        (
            "bidi override in name",
            "name contains bidirectional formatting character U+202E",
        ),
        (
            "bidi isolate in description",
            "description contains bidirectional formatting character U+2067",
        ),
        (
            "not an ISO 4217 currency",
            "currency \"XXQ\" is not an ISO 4217 code",
        ),
    ];
    for (label, want) in named {
        let (_, _, status) = cases.iter().find(|(l, _, _)| *l == label).expect(label);
        assert!(status.message().contains(want), "{label}: {status:?}");
    }
    for (label, code, status) in &cases {
        assert_eq!(status.code(), *code, "{label}: {status:?}");
        assert!(!status.message().is_empty(), "{label}: empty message");
        assert!(
            status.message().len() < 300,
            "{label}: {} byte message: {:.200}",
            status.message().len(),
            status.message()
        );
    }

    // Non-UTF-8 in a string field never reaches the handler: tonic refuses to decode it,
    // and the server answers INVALID_ARGUMENT naming the field (tonic alone says INTERNAL).
    let status = create_with_raw_name(&shop, b"caf\xe9").await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");
    assert!(status.message().contains("name"), "{status:?}");

    assert_eq!(shop.last_lsn().await, lsn, "no bad request wrote anything");
    let after = get_product(&mut c, id.clone()).await;
    assert_eq!(after, p);
    shop.stop().await;
}

/// A CreateProductRequest look-alike whose name is raw bytes (same field number).
#[derive(Clone, PartialEq, prost::Message)]
struct RawCreate {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
    #[prost(int64, tag = "3")]
    price_minor: i64,
    #[prost(int64, tag = "5")]
    stock: i64,
}

async fn create_with_raw_name(
    shop: &concord_testkit::shop::TestShop,
    name: &[u8],
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(shop.channel());
    grpc.ready().await.expect("ready");
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/concord.shop.v1.Shop/CreateProduct");
    let request = admin(RawCreate {
        name: name.to_vec(),
        price_minor: 1,
        stock: 1,
    });
    grpc.unary::<RawCreate, pb::CreateProductResponse, _>(
        request,
        path,
        tonic_prost::ProstCodec::default(),
    )
    .await
    .expect_err("non-UTF-8 name must be refused")
}
