//! Customer accounts: the attacks of issue 16 (someone else's order, cart and checkout;
//! forged, expired and `alg: none` tokens; a `user_id` that is not the token's) and the
//! sign-up / sign-in / admin paths that replace them.

use concord::pb::shop::v1 as pb;
use concord_testkit::shop::{admin, as_user, create, sign_up, start, User};
use tonic::Code;

/// A bearer-carrying request.
fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    concord::auth::attach_bearer(&mut request, token);
    request
}

/// HS256 token for `sub` signed with `key`, expiring at `exp` (seconds since the epoch).
fn hs256(key: &[u8], sub: &str, iat: u64, exp: u64) -> String {
    let claims = serde_json::json!({ "sub": sub, "iat": iat, "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .expect("encode")
}

/// An unsigned `alg: none` token for `sub`.
fn alg_none(sub: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = now_s();
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64.encode(
        serde_json::json!({ "sub": sub, "iat": now, "exp": now + 3600 })
            .to_string()
            .as_bytes(),
    );
    format!("{header}.{claims}.")
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Alice signs up, places an order and fills her cart again; returns her and the order id.
async fn victim_with_order(
    c: &mut concord_testkit::shop::Client,
) -> (concord_testkit::shop::User, String) {
    let tea = create(c, "Tea", 450, 20).await;
    let alice = concord_testkit::shop::sign_up(c, "alice").await;
    concord_testkit::shop::add_to_cart(c, &alice, tea.id.clone(), 1).await;
    let order = concord_testkit::shop::place_order(c, &alice, "alice-1".into()).await;
    concord_testkit::shop::add_to_cart(c, &alice, tea.id.clone(), 2).await;
    (alice, order.id)
}

/// Tokens an attacker can make without the session key, all naming the victim.
fn forged_tokens(victim: &User) -> Vec<(&'static str, String)> {
    let now = now_s();
    let v = victim.id.as_str();
    let mut tampered = victim.token.clone();
    tampered.pop();
    tampered.push(if victim.token.ends_with('A') {
        'B'
    } else {
        'A'
    });
    vec![
        ("none", String::new()),
        ("garbage", "not-a-jwt".into()),
        (
            "wrong key",
            hs256(b"attacker-chosen-key-0123456789abcdef", v, now, now + 3600),
        ),
        ("alg none", alg_none(v)),
        ("tampered signature", tampered),
        (
            "expired",
            hs256(
                concord_testkit::shop::SESSION_KEY.as_bytes(),
                v,
                now - 7200,
                now - 3600,
            ),
        ),
    ]
}

/// Reading the victim's order by id, without the victim's session, is refused.
#[tokio::test]
async fn someone_elses_order_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    let (victim, order_id) = victim_with_order(&mut c).await;
    for (label, token) in forged_tokens(&victim) {
        let request = pb::GetOrderRequest {
            order_id: order_id.clone(),
        };
        let err = if token.is_empty() {
            c.get_order(request).await
        } else {
            c.get_order(bearer(&token, request)).await
        }
        .expect_err(label);
        assert_eq!(err.code(), Code::Unauthenticated, "{label}: {err:?}");
        let request = pb::ListOrdersRequest {
            user_id: victim.id.clone(),
            ..Default::default()
        };
        let err = if token.is_empty() {
            c.list_orders(request).await
        } else {
            c.list_orders(bearer(&token, request)).await
        }
        .expect_err(label);
        assert_eq!(err.code(), Code::Unauthenticated, "{label}: {err:?}");
    }
    // Another customer's valid session: the order is NOT_FOUND exactly like an unknown id,
    // and naming the victim in ListOrders is PERMISSION_DENIED.
    let bob = sign_up(&mut c, "bob").await;
    let err = c
        .get_order(as_user(
            &bob,
            pb::GetOrderRequest {
                order_id: order_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let unknown = c
        .get_order(as_user(
            &bob,
            pb::GetOrderRequest {
                order_id: "o-000000000999".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.message().replace(&order_id, "ID"),
        unknown.message().replace("o-000000000999", "ID"),
        "someone else's order reads like an unknown one"
    );
    let err = c
        .list_orders(as_user(
            &bob,
            pb::ListOrdersRequest {
                user_id: victim.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let own = c
        .list_orders(as_user(&bob, pb::ListOrdersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(own.orders.is_empty(), "bob sees only his own (no) orders");
    // The victim still reads it.
    let mine = c
        .get_order(as_user(&victim, pb::GetOrderRequest { order_id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.order.unwrap().user_id, victim.id);
    shop.stop().await;
}

/// Checking out or emptying the victim's cart without the victim's session is refused,
/// and the cart is still there afterwards.
#[tokio::test]
async fn someone_elses_cart_cannot_be_checked_out() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    let (victim, _) = victim_with_order(&mut c).await;
    let lsn = shop.last_lsn().await;
    for (label, token) in forged_tokens(&victim) {
        let place = pb::PlaceOrderRequest {
            user_id: victim.id.clone(),
            idempotency_key: format!("attack-{}", label.replace(' ', "-")),
        };
        let err = if token.is_empty() {
            c.place_order(place).await
        } else {
            c.place_order(bearer(&token, place)).await
        }
        .expect_err(label);
        assert_eq!(err.code(), Code::Unauthenticated, "{label}: {err:?}");
        let clear = pb::ClearCartRequest {
            user_id: victim.id.clone(),
        };
        let err = if token.is_empty() {
            c.clear_cart(clear).await
        } else {
            c.clear_cart(bearer(&token, clear)).await
        }
        .expect_err(label);
        assert_eq!(err.code(), Code::Unauthenticated, "{label}: {err:?}");
    }
    // Another customer's valid session naming the victim: PERMISSION_DENIED for every
    // cart and order write.
    let mallory = sign_up(&mut c, "mallory").await;
    let lsn_after_signup = shop.last_lsn().await;
    let v = victim.id.clone();
    let denied = [
        c.place_order(as_user(
            &mallory,
            pb::PlaceOrderRequest {
                user_id: v.clone(),
                idempotency_key: "steal".into(),
            },
        ))
        .await
        .map(drop),
        c.clear_cart(as_user(
            &mallory,
            pb::ClearCartRequest { user_id: v.clone() },
        ))
        .await
        .map(drop),
        c.add_cart_item(as_user(
            &mallory,
            pb::AddCartItemRequest {
                user_id: v.clone(),
                product_id: "p-000000000001".into(),
                quantity: 1,
            },
        ))
        .await
        .map(drop),
        c.remove_cart_item(as_user(
            &mallory,
            pb::RemoveCartItemRequest {
                user_id: v.clone(),
                product_id: "p-000000000001".into(),
            },
        ))
        .await
        .map(drop),
        c.get_cart(as_user(&mallory, pb::GetCartRequest { user_id: v.clone() }))
            .await
            .map(drop),
    ];
    for (i, result) in denied.into_iter().enumerate() {
        let err = result.expect_err("must be refused");
        assert_eq!(err.code(), Code::PermissionDenied, "call {i}: {err:?}");
    }
    assert_eq!(shop.last_lsn().await, lsn_after_signup, "nothing written");
    assert!(
        lsn_after_signup == lsn + 1,
        "only mallory's sign-up was written"
    );
    // The victim's cart is intact and hers to check out.
    let cart = c
        .get_cart(as_user(&victim, pb::GetCartRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    assert_eq!(cart.lines.len(), 1);
    assert_eq!(cart.lines[0].quantity, 2);
    concord_testkit::shop::place_order(&mut c, &victim, "alice-2".into()).await;
    shop.stop().await;
}

/// A correctly signed token for an account that does not exist (never issued, or lost in
/// an async failover) opens nothing.
#[tokio::test]
async fn token_for_a_missing_account_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    let now = now_s();
    let ghost = hs256(
        concord_testkit::shop::SESSION_KEY.as_bytes(),
        "u-000000000042",
        now,
        now + 600,
    );
    let err = c
        .get_cart(bearer(&ghost, pb::GetCartRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    shop.stop().await;
}

/// Sign-up and sign-in: case-insensitive unique usernames (ALREADY_EXISTS), the same
/// answer for a wrong password and an unknown name, fresh sessions that work, bounded
/// passwords, and no password or hash in any reply.
#[tokio::test]
async fn sign_up_and_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    let up = c
        .sign_up(pb::SignUpRequest {
            username: "Carol".into(),
            password: concord_testkit::shop::PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let account = up.account.clone().unwrap();
    assert_eq!(account.username, "Carol");
    assert!(account.user_id.starts_with("u-"), "{account:?}");
    assert!(up.write.unwrap().lsn > 0);
    let session = up.session.unwrap();
    let ttl_ms = session.expires_at_unix_ms - now_s() as i64 * 1000;
    assert!(ttl_ms > 3_600_000, "expires in the future: {ttl_ms} ms");
    assert!(!format!("{:?}", account).contains(concord_testkit::shop::PASSWORD));

    let dup = c
        .sign_up(pb::SignUpRequest {
            username: "carol".into(),
            password: "another password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup:?}");

    let signed_in = c
        .sign_in(pb::SignInRequest {
            username: "CAROL".into(),
            password: concord_testkit::shop::PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(signed_in.account.unwrap(), account);
    let carol = User {
        id: account.user_id.clone(),
        token: signed_in.session.unwrap().token,
    };
    let me = c
        .get_account(as_user(&carol, pb::GetAccountRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.account.unwrap(), account);

    let wrong = c
        .sign_in(pb::SignInRequest {
            username: "carol".into(),
            password: "wrong password".into(),
        })
        .await
        .unwrap_err();
    let unknown = c
        .sign_in(pb::SignInRequest {
            username: "nobody".into(),
            password: concord_testkit::shop::PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(
        wrong.message(),
        unknown.message(),
        "no username enumeration"
    );
    assert!(!wrong.message().contains("wrong password\""));

    for (label, username, password) in [
        ("short password", "dave", "1234567"),
        ("long password", "dave", &"p".repeat(129)[..]),
        ("bad username", "da ve", concord_testkit::shop::PASSWORD),
        ("short username", "dv", concord_testkit::shop::PASSWORD),
    ] {
        let err = c
            .sign_up(pb::SignUpRequest {
                username: username.into(),
                password: password.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{label}: {err:?}");
        assert!(
            !err.message().contains(password),
            "{label}: password echoed"
        );
    }
    shop.stop().await;
}

/// The admin token reads everyone's orders (GetOrder, ListOrders for a named user, and
/// the paged, filtered ListAllOrders) but places no order; customers cannot list all.
#[tokio::test]
async fn admin_lists_all_orders() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    let tea = create(&mut c, "Tea", 100, 100).await;
    let mut ids = Vec::new();
    let ann = sign_up(&mut c, "ann").await;
    let ben = sign_up(&mut c, "ben").await;
    for i in 0..3 {
        for user in [&ann, &ben] {
            concord_testkit::shop::add_to_cart(&mut c, user, tea.id.clone(), 1).await;
            ids.push(
                concord_testkit::shop::place_order(&mut c, user, format!("k{i}"))
                    .await
                    .id,
            );
        }
    }
    c.update_order_status(admin(pb::UpdateOrderStatusRequest {
        order_id: ids[1].clone(),
        status: pb::OrderStatus::Paid as i32,
    }))
    .await
    .unwrap();
    ids.reverse();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_all_orders(admin(pb::ListAllOrdersRequest {
                page_size: 4,
                page_token: token.clone(),
                status: 0,
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.orders.len() <= 4);
        seen.extend(page.orders.into_iter().map(|o| o.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids, "every customer's orders, newest first");
    let paid = c
        .list_all_orders(admin(pb::ListAllOrdersRequest {
            status: pb::OrderStatus::Paid as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paid.orders.len(), 1);
    assert_eq!(paid.orders[0].id, ids[4]);
    assert_eq!(paid.orders[0].user_id, ben.id);

    let err = c
        .list_all_orders(as_user(&ann, pb::ListAllOrdersRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = c
        .list_all_orders(pb::ListAllOrdersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let bens = c
        .list_orders(admin(pb::ListOrdersRequest {
            user_id: ben.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bens.orders.len(), 3);
    let err = c
        .place_order(admin(pb::PlaceOrderRequest {
            user_id: ann.id.clone(),
            idempotency_key: "admin".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    shop.stop().await;
}

/// Password guessing is rate-limited per username: after the burst, attempts on that name
/// (right password or not, any case) get RESOURCE_EXHAUSTED with the wait, while other
/// customers still sign in.
#[tokio::test]
async fn sign_in_attempts_are_rate_limited_per_username() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    for name in ["dora", "eric"] {
        c.sign_up(pb::SignUpRequest {
            username: name.into(),
            password: concord_testkit::shop::PASSWORD.into(),
        })
        .await
        .unwrap();
    }
    let attempt = |username: &str, password: &str| pb::SignInRequest {
        username: username.into(),
        password: password.into(),
    };
    for guess in 0..5 {
        let err = c
            .sign_in(attempt("dora", &format!("guess number {guess}")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    let limited = c
        .sign_in(attempt("DORA", concord_testkit::shop::PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(limited.message().contains("retry in"), "{limited:?}");
    let other = c
        .sign_in(attempt("eric", concord_testkit::shop::PASSWORD))
        .await;
    assert!(other.is_ok(), "{other:?}");
}

/// Sign-out ends every session of the account: the token used and another one issued
/// earlier are both refused afterwards (also a copy an attacker kept), while a fresh
/// sign-in works; the admin token has no session to end, and no token is UNAUTHENTICATED.
#[tokio::test]
async fn sign_out_ends_every_session_of_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), |_| {}).await;
    let mut c = shop.client();
    let fay = sign_up(&mut c, "fay").await;
    let sign_in = || pb::SignInRequest {
        username: "fay".into(),
        password: concord_testkit::shop::PASSWORD.into(),
    };
    let other = c.sign_in(sign_in()).await.unwrap().into_inner();
    let other = User {
        id: fay.id.clone(),
        token: other.session.unwrap().token,
    };
    for session in [&fay, &other] {
        c.get_account(as_user(session, pb::GetAccountRequest {}))
            .await
            .expect("valid before the sign-out");
    }
    let out = c
        .sign_out(as_user(&fay, pb::SignOutRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(out.write.unwrap().lsn > 0, "a sign-out is a write");
    for session in [&fay, &other] {
        let err = c
            .get_account(as_user(session, pb::GetAccountRequest {}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains("signed out"), "{err:?}");
    }
    let fresh = c.sign_in(sign_in()).await.unwrap().into_inner();
    let fresh = User {
        id: fay.id.clone(),
        token: fresh.session.unwrap().token,
    };
    c.get_account(as_user(&fresh, pb::GetAccountRequest {}))
        .await
        .expect("a new sign-in is a new session");

    let err = c.sign_out(admin(pb::SignOutRequest {})).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = c.sign_out(pb::SignOutRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}
