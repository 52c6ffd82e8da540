//! After the run: what the cluster shows, read through its public APIs only — the final
//! primary's products and orders, each acknowledged order's key replayed, the stock, and
//! the aggregator's ledger audit. The checker (`checker.rs`) judges; this only gathers.
//!
//! The final primary is read once it has applied everything it holds durably
//! (`applied_lsn >= durable_lsn`): a replica promoted a moment ago applies its pending
//! entries off the ack path, and reading before that would report writes as lost that are
//! merely not applied yet.

use std::time::{Duration, Instant};

use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::shop_client::ShopClient;
use concord::pb::stake::v1::{staking_client::StakingClient, VerifyLedgerRequest};
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use super::checker::Observations;
use super::history::{History, Written};
use super::probe::Probe;
use super::workload::{bearer, Setup, Tokens};

/// Longest wait for a settled primary after the run.
pub const SETTLE_WAIT: Duration = Duration::from_secs(45);
/// Reads in flight at once.
const READ_CONCURRENCY: usize = 16;
/// Attempts per read before it counts as unreadable.
const READ_ATTEMPTS: usize = 5;

/// Waits for a settled primary and returns its address and term.
pub async fn settled_primary(probe: &Probe) -> anyhow::Result<(String, u64)> {
    let deadline = Instant::now() + SETTLE_WAIT;
    while Instant::now() < deadline {
        if let Some((addr, term)) = probe.primary().await {
            if let Some(status) = probe.replication_status(&addr).await {
                if status.role == pb::Role::Primary as i32
                    && status.applied_lsn >= status.durable_lsn
                {
                    return Ok((addr, term));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!("no settled shop primary within {SETTLE_WAIT:?} after the run")
}

/// Gathers the observations for `history` from the primary at `primary`.
pub async fn observe(
    probe: &Probe,
    primary: &str,
    tokens: &Tokens,
    setup: &Setup,
    history: &History,
) -> anyhow::Result<Observations> {
    let channel = probe.channel(primary)?;
    let mut seen = Observations::default();

    // Acknowledged products, by id and name.
    let products: Vec<(String, String)> = history
        .writes
        .iter()
        .filter_map(|w| match &w.what {
            Written::Product { id, name } => Some((id.clone(), name.clone())),
            Written::Order { .. } => None,
        })
        .collect();
    let mut reads = futures::stream::iter(products)
        .map(|(id, name)| {
            let channel = channel.clone();
            let admin = tokens.admin.clone();
            async move {
                let product = get_product(&channel, &admin, &id).await;
                (id, name, product)
            }
        })
        .buffer_unordered(READ_CONCURRENCY);
    while let Some((id, name, product)) = reads.next().await {
        match product {
            Ok(Some(product)) if product.name == name => {
                seen.products_found.insert(id);
            }
            Ok(_) => {}
            Err(err) => seen.errors.push(format!("product {id}: {err}")),
        }
    }
    drop(reads);

    // Every order on the primary: keys, and units per stock product.
    let mut ordered: std::collections::HashMap<String, i64> = Default::default();
    let mut page_token = String::new();
    loop {
        let request = bearer(
            pb::ListAllOrdersRequest {
                page_size: 500,
                page_token: page_token.clone(),
                status: pb::OrderStatus::Unspecified as i32,
            },
            &tokens.admin,
        );
        let page = ShopClient::new(channel.clone())
            .list_all_orders(request)
            .await
            .map_err(|s| anyhow::anyhow!("ListAllOrders on {primary}: {s}"))?
            .into_inner();
        for order in page.orders {
            if order.status != pb::OrderStatus::Cancelled as i32 {
                for line in &order.lines {
                    *ordered.entry(line.product_id.clone()).or_default() += line.quantity;
                }
            }
            seen.orders_by_key
                .entry(order.idempotency_key)
                .or_default()
                .push(order.id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    // Stock of every stock product.
    for item in &history.stock {
        match get_product(&channel, &tokens.admin, &item.id).await {
            Ok(Some(product)) => {
                let units = ordered.get(&item.id).copied().unwrap_or(0);
                seen.stock.insert(item.id.clone(), (product.stock, units));
            }
            Ok(None) => seen
                .errors
                .push(format!("stock product {} is gone", item.id)),
            Err(err) => seen
                .errors
                .push(format!("stock product {}: {err}", item.id)),
        }
    }

    // Replay every acknowledged order's key, from an empty cart (a leftover line from an
    // unacknowledged checkout would make the replay a different cart).
    for session in &setup.sessions {
        let clear = bearer(
            pb::ClearCartRequest {
                user_id: String::new(),
            },
            session,
        );
        if let Err(s) = ShopClient::new(channel.clone()).clear_cart(clear).await {
            seen.errors.push(format!("ClearCart: {s}"));
        }
    }
    for w in &history.writes {
        let Written::Order { key, user, .. } = &w.what else {
            continue;
        };
        let Some(session) = setup.sessions.get(*user) else {
            seen.replays
                .insert(key.clone(), Err(format!("no session for user {user}")));
            continue;
        };
        let request = bearer(
            pb::PlaceOrderRequest {
                user_id: String::new(),
                idempotency_key: key.clone(),
            },
            session,
        );
        let replay = match ShopClient::new(channel.clone()).place_order(request).await {
            Ok(reply) => reply
                .into_inner()
                .order
                .map(|o| o.id)
                .ok_or_else(|| "PlaceOrder returned no order".to_owned()),
            Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
        };
        seen.replays.insert(key.clone(), replay);
    }

    seen.ledger = verify_ledger(probe).await;
    Ok(seen)
}

/// The ledger's own audit (`VerifyLedger`): the events checked, or the problem; `None`
/// when no aggregator is registered.
pub async fn verify_ledger(probe: &Probe) -> Option<Result<u64, String>> {
    let aggregator = probe.aggregator().await?;
    let channel = match probe.channel(&aggregator) {
        Ok(channel) => channel,
        Err(err) => return Some(Err(format!("no channel to {aggregator}: {err}"))),
    };
    let mut request = tonic::Request::new(VerifyLedgerRequest {});
    request.set_timeout(Duration::from_secs(10));
    Some(
        match StakingClient::new(channel).verify_ledger(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                match reply.ok {
                    true => Ok(reply.events_checked),
                    false => Err(format!("event {}: {}", reply.first_bad_seq, reply.problem)),
                }
            }
            Err(s) => Err(format!("VerifyLedger failed: {s}")),
        },
    )
}

/// The product, `None` when the shop says NOT_FOUND; retried on other errors.
async fn get_product(
    channel: &Channel,
    admin: &str,
    id: &str,
) -> Result<Option<pb::Product>, tonic::Status> {
    let mut last = None;
    for _ in 0..READ_ATTEMPTS {
        let request = bearer(pb::GetProductRequest { id: id.to_owned() }, admin);
        match ShopClient::new(channel.clone()).get_product(request).await {
            Ok(reply) => return Ok(reply.into_inner().product),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => last = Some(s),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.unwrap_or_else(|| tonic::Status::unknown("no attempt")))
}
