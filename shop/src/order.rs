//! Orders: placing (idempotent checkout), reading, listing, and the status machine.
//!
//! **PlaceOrder** runs as ONE transaction: look up the idempotency record; re-check every
//! cart line against current stock and currency; decrement stock; snapshot names and
//! prices into the order; index it under the user; record the idempotency key; delete the
//! cart. Either all of that commits under one LSN or nothing does. Because sled
//! serializes transactions, two checkouts racing for the last unit cannot both see it:
//! stock never goes negative (it is a `u64`, and the check precedes the decrement).
//!
//! **Idempotency** is per (user, key). A retry with the same key returns the original
//! order with `replayed = true` and writes nothing — *provided* the cart is empty (the
//! original checkout cleared it) or holds exactly the ordered lines again. A cart with
//! different contents under a used key is `FailedPrecondition`: the client must choose a
//! new key for a new checkout. A replay is acknowledged only once the original order is
//! durable.
//!
//! **Status machine**: pending → paid → shipped → delivered; pending|paid → cancelled.
//! Everything else (including "to the same status" and anything out of delivered or
//! cancelled) is `FailedPrecondition` naming both states. Cancelling restores each line's
//! stock to its product if the product still exists.

use concord::error::quote;
use std::fmt;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::cart::{self, StoredCart};
use crate::catalog;
use crate::codec::Record;
use crate::error::{Result, ShopError};
use crate::keys::{self, OrderId, LAST_ORDER_ID};
#[cfg(test)]
use crate::store::Committed;
use crate::store::{Store, Tx, TxResult, WriteOp};
use crate::validate;
use crate::wal::{Lsn, TreeName};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed, awaiting payment.
    Pending,
    /// Paid.
    Paid,
    /// Handed to the carrier.
    Shipped,
    /// Received (final).
    Delivered,
    /// Cancelled before shipping; stock restored (final).
    Cancelled,
}

impl OrderStatus {
    /// All statuses (for transition tables).
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    /// Whether the state machine allows `self → to`.
    pub fn can_become(self, to: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, to),
            (Pending, Paid)
                | (Paid, Shipped)
                | (Shipped, Delivered)
                | (Pending, Cancelled)
                | (Paid, Cancelled)
        )
    }

    /// Lower-case name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One product of an order, priced when the order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product (it may since have been deleted).
    pub product_id: keys::ProductId,
    /// Name at placement.
    pub name: String,
    /// Units ordered.
    pub quantity: u32,
    /// Unit price at placement.
    pub unit_price_minor: i64,
    /// `quantity × unit_price_minor`.
    pub line_total_minor: i64,
}

/// A placed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Shop-assigned id.
    pub id: OrderId,
    /// Owner.
    pub user_id: String,
    /// Lines in product id order.
    pub lines: Vec<OrderLine>,
    /// Sum of line totals.
    pub total_minor: i64,
    /// Currency of every line.
    pub currency: String,
    /// Current status.
    pub status: OrderStatus,
    /// Key the order was placed with.
    pub idempotency_key: String,
    /// Placement time, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Last status change, ms since the Unix epoch.
    pub updated_at_ms: i64,
    /// LSN of the placing write (a replayed PlaceOrder reports it).
    pub placed_lsn: Lsn,
    /// Term the order was placed in (a replayed PlaceOrder reports it; 0 for orders
    /// stored before this field existed).
    #[serde(default)]
    pub placed_term: u64,
}

/// Result of PlaceOrder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The order (the original one on a replay).
    pub order: Order,
    /// True when the key had already placed this order and nothing was written.
    pub replayed: bool,
}

/// One page of a user's orders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderPage {
    /// Orders, newest first.
    pub orders: Vec<Order>,
    /// Token for the next page; empty on the last page.
    pub next_page_token: String,
}

/// One page of every customer's orders, newest first (the admin's back office), optionally
/// only those in `status`. The scan runs backwards from just below the page token's id; a
/// filtered page examines at most [`validate::MAX_SCAN_PER_PAGE`] orders, so its cost is
/// bounded whatever the order count, and may come back short with a token to continue.
pub fn list_all(
    store: &Store,
    status: Option<OrderStatus>,
    page_size: u32,
    page_token: &str,
) -> Result<OrderPage> {
    let page_size = validate::page_size(page_size);
    let after: Option<OrderId> = keys::page_after(page_token)?;
    let upper = match after {
        Some(id) => Bound::Excluded(id.key()),
        None => Bound::Unbounded,
    };
    let mut scan = store
        .tree(TreeName::Orders)
        .range::<[u8; 8], _>((Bound::Unbounded, upper))
        .rev();
    let mut page = OrderPage::default();
    let mut scanned = 0usize;
    let mut last_scanned = None;
    while page.orders.len() < page_size {
        if status.is_some() && scanned >= validate::MAX_SCAN_PER_PAGE {
            if let Some(id) = last_scanned {
                page.next_page_token = OrderId::to_string(&id);
            }
            return Ok(page);
        }
        let Some(item) = scan.next() else {
            return Ok(page);
        };
        let (_, bytes) = item?;
        let order: Order = Order::decode(&bytes)?;
        scanned += 1;
        last_scanned = Some(order.id);
        if status.is_none_or(|s| s == order.status) {
            page.orders.push(order);
        }
    }
    if scan.next().transpose()?.is_some() {
        if let Some(last) = page.orders.last() {
            page.next_page_token = last.id.to_string();
        }
    }
    Ok(page)
}

/// Checks out `user`'s cart (see module docs).
/// (One transaction of its own, for tests; the shop queues `place_op` instead.)
#[cfg(test)]
pub fn place(store: &Store, user: &str, idempotency_key: &str) -> Result<Committed<Placed>> {
    store.transact(place_op(user.to_string(), idempotency_key.to_string())?)
}

/// Validates a checkout; the returned write performs it (see [`WriteOp`]).
pub fn place_op(user: String, idempotency_key: String) -> Result<impl WriteOp<Placed>> {
    validate::user_id(&user)?;
    validate::idempotency_key(&idempotency_key)?;
    let idem_key = keys::idempotency_key(&user, &idempotency_key);
    Ok(move |tx: &Tx<'_>| {
        let (user, idempotency_key) = (user.as_str(), idempotency_key.as_str());
        let cart = cart::load(tx, user)?;
        if let Some(raw) = tx.get(TreeName::Idempotency, &idem_key)? {
            let id = OrderId::from_key(&raw)?;
            let order = must_load(tx, id)?;
            if !cart.items.is_empty() && !same_lines(&cart, &order) {
                return Err(ShopError::precondition(format!(
                    "idempotency key {} already placed order {id} for a different cart; use a new key",
                    quote(idempotency_key)
                ))
                .into());
            }
            return Ok(Placed {
                order,
                replayed: true,
            });
        }
        if cart.items.is_empty() {
            return Err(ShopError::precondition(format!("the cart of {user} is empty")).into());
        }
        let mut lines = Vec::with_capacity(cart.items.len());
        let mut currency: Option<String> = None;
        let mut total: i64 = 0;
        for item in &cart.items {
            let Some(mut product) = catalog::load(tx, item.product_id)? else {
                return Err(ShopError::precondition(format!(
                    "product {} in the cart no longer exists; remove it",
                    item.product_id
                ))
                .into());
            };
            if product.stock < u64::from(item.quantity) {
                return Err(ShopError::precondition(format!(
                    "insufficient stock for product {}: {} requested, {} available",
                    product.id, item.quantity, product.stock
                ))
                .into());
            }
            match &currency {
                None => currency = Some(product.currency.clone()),
                Some(c) if *c != product.currency => {
                    return Err(ShopError::precondition(format!(
                        "the cart mixes {c} and {}; an order has one currency",
                        product.currency
                    ))
                    .into());
                }
                Some(_) => {}
            }
            let line_total = product
                .price_minor
                .checked_mul(i64::from(item.quantity))
                .ok_or_else(|| ShopError::internal("order line total overflows"))?;
            total = total
                .checked_add(line_total)
                .ok_or_else(|| ShopError::internal("order total overflows"))?;
            lines.push(OrderLine {
                product_id: product.id,
                name: product.name.clone(),
                quantity: item.quantity,
                unit_price_minor: product.price_minor,
                line_total_minor: line_total,
            });
            product.stock -= u64::from(item.quantity);
            product.updated_at_ms = tx.now_ms();
            catalog::save(tx, &product)?;
        }
        let id = OrderId(tx.next_id(LAST_ORDER_ID)?);
        let order = Order {
            id,
            user_id: user.to_string(),
            lines,
            total_minor: total,
            currency: currency.unwrap_or_default(),
            status: OrderStatus::Pending,
            idempotency_key: idempotency_key.to_string(),
            created_at_ms: tx.now_ms(),
            updated_at_ms: tx.now_ms(),
            placed_lsn: tx.lsn()?,
            placed_term: tx.term(),
        };
        save(tx, &order)?;
        tx.put(
            TreeName::UserOrders,
            &keys::user_order_key(user, id),
            Vec::new(),
        )?;
        tx.put(TreeName::Idempotency, &idem_key, id.key().to_vec())?;
        tx.delete(TreeName::Carts, user.as_bytes())?;
        Ok(Placed {
            order,
            replayed: false,
        })
    })
}

/// Moves an order to `to` if the state machine allows it; cancelling restores stock.
/// (One transaction of its own, for tests; the shop queues `set_status_op` instead.)
#[cfg(test)]
pub fn set_status(store: &Store, id: OrderId, to: OrderStatus) -> Result<Committed<Order>> {
    store.transact(set_status_op(id, to))
}

/// The write that moves an order to `to` (see [`WriteOp`]).
pub fn set_status_op(id: OrderId, to: OrderStatus) -> impl WriteOp<Order> {
    move |tx: &Tx<'_>| {
        let mut order = must_load(tx, id)?;
        let from = order.status;
        if !from.can_become(to) {
            return Err(ShopError::precondition(format!(
                "order {id} cannot go from {from} to {to}"
            ))
            .into());
        }
        if to == OrderStatus::Cancelled {
            for line in &order.lines {
                if let Some(mut product) = catalog::load(tx, line.product_id)? {
                    product.stock = product.stock.saturating_add(u64::from(line.quantity));
                    product.updated_at_ms = tx.now_ms();
                    catalog::save(tx, &product)?;
                }
            }
        }
        order.status = to;
        order.updated_at_ms = tx.now_ms();
        save(tx, &order)?;
        Ok(order)
    }
}

/// Reads one order; unknown ids are `NotFound`.
pub fn get(store: &Store, id: OrderId) -> Result<Order> {
    match store.tree(TreeName::Orders).get(id.key())? {
        Some(bytes) => Order::decode(&bytes),
        None => Err(not_found(id)),
    }
}

/// One page of `user`'s orders, newest first: a reverse range scan of `user_orders`
/// below the cursor, so its cost is the page size, not the number of orders.
pub fn list_for_user(
    store: &Store,
    user: &str,
    page_size: u32,
    page_token: &str,
) -> Result<OrderPage> {
    validate::user_id(user)?;
    let page_size = validate::page_size(page_size);
    let after: Option<OrderId> = keys::page_after(page_token)?;
    let prefix = keys::user_prefix(user);
    let upper = match after {
        Some(id) => Bound::Excluded(keys::user_order_key(user, id)),
        None => {
            // Everything in the prefix: the next prefix is user ‖ 0x01.
            let mut end = prefix.clone();
            if let Some(last) = end.last_mut() {
                *last = 1;
            }
            Bound::Excluded(end)
        }
    };
    let mut scan = store
        .tree(TreeName::UserOrders)
        .range::<Vec<u8>, _>((Bound::Included(prefix.clone()), upper))
        .rev();
    let mut page = OrderPage::default();
    while page.orders.len() < page_size {
        let Some(item) = scan.next() else {
            return Ok(page);
        };
        let (key, _) = item?;
        let id = OrderId::from_key(&key[prefix.len()..])?;
        match get(store, id) {
            Ok(order) => page.orders.push(order),
            Err(ShopError::NotFound(_)) => {
                tracing::error!(order = %id, user, "user_orders index points at a missing order")
            }
            Err(e) => return Err(e),
        }
    }
    if scan.next().transpose()?.is_some() {
        if let Some(last) = page.orders.last() {
            page.next_page_token = last.id.to_string();
        }
    }
    Ok(page)
}

fn same_lines(cart: &StoredCart, order: &Order) -> bool {
    cart.items.len() == order.lines.len()
        && cart
            .items
            .iter()
            .zip(&order.lines)
            .all(|(c, o)| c.product_id == o.product_id && c.quantity == o.quantity)
}

fn must_load(tx: &Tx<'_>, id: OrderId) -> TxResult<Order> {
    tx.get_record(&id.key())?
        .ok_or_else(|| not_found(id).into())
}

fn save(tx: &Tx<'_>, order: &Order) -> TxResult<()> {
    tx.put_record(&order.id.key(), order)
}

/// The error for an order that does not exist, also given for someone else's order so the
/// two cannot be told apart.
pub fn not_found(id: OrderId) -> ShopError {
    ShopError::not_found(format!("order {id} does not exist"))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::catalog::NewProduct;
    use crate::keys::ProductId;
    use crate::store::test::temp_store;

    fn product(store: &Store, price: i64, stock: i64) -> ProductId {
        let new = NewProduct {
            name: format!("item {price}"),
            price_minor: price,
            stock,
            ..Default::default()
        };
        catalog::create(store, new)
            .unwrap()
            .durable_blocking()
            .unwrap()
            .value
            .id
    }

    fn place_ok(store: &Store, user: &str, key: &str) -> Placed {
        place(store, user, key)
            .unwrap()
            .durable_blocking()
            .unwrap()
            .value
    }

    /// Checkout snapshots prices, decrements stock, clears the cart, and later price
    /// changes don't touch the order.
    #[test]
    fn place_order_flow() {
        let (_dir, store) = temp_store();
        let tea = product(&store, 250, 10);
        let mug = product(&store, 1000, 2);
        cart::add_item(&store, "alice", tea, 3).unwrap();
        cart::add_item(&store, "alice", mug, 2).unwrap();
        let placed = place_ok(&store, "alice", "k1");
        assert!(!placed.replayed);
        let order = placed.order;
        assert_eq!(order.total_minor, 750 + 2000);
        assert_eq!(order.status, OrderStatus::Pending);
        assert_eq!(order.placed_lsn, store.last_lsn().unwrap());
        assert_eq!(catalog::get(&store, tea).unwrap().stock, 7);
        assert_eq!(catalog::get(&store, mug).unwrap().stock, 0);
        assert!(cart::get(&store, "alice").unwrap().lines.is_empty());
        assert_eq!(get(&store, order.id).unwrap(), order);
        let empty = place(&store, "alice", "k2").err();
        assert!(
            matches!(empty, Some(ShopError::FailedPrecondition(_))),
            "{empty:?}"
        );
    }

    /// Same key → same order and no write; same key with a different cart → precondition.
    #[test]
    fn idempotency() {
        let (_dir, store) = temp_store();
        let tea = product(&store, 250, 10);
        cart::add_item(&store, "bob", tea, 1).unwrap();
        let first = place_ok(&store, "bob", "key-1");
        let lsn = store.last_lsn().unwrap();
        let again = place(&store, "bob", "key-1").unwrap();
        assert_eq!(again.lsn, None);
        let again = again.durable_blocking().unwrap().value;
        assert!(again.replayed);
        assert_eq!(again.order, first.order);
        cart::add_item(&store, "bob", tea, 1).unwrap();
        let replay_same_cart = place_ok(&store, "bob", "key-1");
        assert!(
            replay_same_cart.replayed,
            "identical cart counts as a retry"
        );
        cart::add_item(&store, "bob", tea, 1).unwrap();
        let lsn_before = store.last_lsn().unwrap();
        let conflict = place(&store, "bob", "key-1").err();
        assert!(
            matches!(conflict, Some(ShopError::FailedPrecondition(_))),
            "{conflict:?}"
        );
        assert_eq!(store.last_lsn().unwrap(), lsn_before);
        assert!(lsn < lsn_before);
        // Keys are per user: carol may use the same key.
        cart::add_item(&store, "carol", tea, 1).unwrap();
        assert!(!place_ok(&store, "carol", "key-1").replayed);
        assert_eq!(catalog::get(&store, tea).unwrap().stock, 8);
    }

    /// The full transition table: allowed moves succeed, others are FailedPrecondition
    /// naming both states, and cancelling restores stock.
    #[test]
    fn status_machine_table() {
        use OrderStatus::*;
        let (_dir, store) = temp_store();
        let tea = product(&store, 100, 1_000);
        let mut n = 0;
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                n += 1;
                let user = format!("u{n}");
                cart::add_item(&store, &user, tea, 2).unwrap();
                let order = place_ok(&store, &user, "k").order;
                let path: &[OrderStatus] = match from {
                    Pending => &[],
                    Paid => &[Paid],
                    Shipped => &[Paid, Shipped],
                    Delivered => &[Paid, Shipped, Delivered],
                    Cancelled => &[Cancelled],
                };
                for step in path {
                    set_status(&store, order.id, *step).unwrap();
                }
                let stock_before = catalog::get(&store, tea).unwrap().stock;
                let allowed = matches!(
                    (from, to),
                    (Pending, Paid)
                        | (Paid, Shipped)
                        | (Shipped, Delivered)
                        | (Pending, Cancelled)
                        | (Paid, Cancelled)
                );
                match set_status(&store, order.id, to) {
                    Ok(c) => {
                        assert!(allowed, "{from} -> {to} should fail");
                        assert_eq!(c.value.status, to);
                        let restored = if to == Cancelled { 2 } else { 0 };
                        assert_eq!(
                            catalog::get(&store, tea).unwrap().stock,
                            stock_before + restored
                        );
                    }
                    Err(ShopError::FailedPrecondition(msg)) => {
                        assert!(!allowed, "{from} -> {to} should succeed: {msg}");
                        assert!(
                            msg.contains(from.as_str()) && msg.contains(to.as_str()),
                            "{msg}"
                        );
                        assert_eq!(get(&store, order.id).unwrap().status, from);
                    }
                    Err(e) => panic!("{from} -> {to}: {e:?}"),
                }
            }
        }
        assert!(matches!(
            set_status(&store, OrderId(9_999), Paid),
            Err(ShopError::NotFound(_))
        ));
    }

    /// Orders list newest first, in pages, per user only.
    #[test]
    fn list_orders_pages() {
        let (_dir, store) = temp_store();
        let tea = product(&store, 100, 1_000);
        let mut ids = Vec::new();
        for i in 0..7 {
            cart::add_item(&store, "dave", tea, 1).unwrap();
            ids.push(place_ok(&store, "dave", &format!("k{i}")).order.id);
            cart::add_item(&store, "dave2", tea, 1).unwrap();
            place_ok(&store, "dave2", &format!("k{i}"));
        }
        ids.reverse();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = list_for_user(&store, "dave", 3, &token).unwrap();
            seen.extend(page.orders.iter().map(|o| o.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen, ids);
        assert!(list_for_user(&store, "nobody", 0, "")
            .unwrap()
            .orders
            .is_empty());
        assert!(matches!(
            list_for_user(&store, "dave", 0, "p-1"),
            Err(ShopError::InvalidArgument(_))
        ));
    }

    /// Every user's orders, newest first, in pages; the status filter keeps only matches.
    #[test]
    fn list_all_pages_and_filters() {
        let (_dir, store) = temp_store();
        let tea = product(&store, 100, 1_000);
        let mut ids = Vec::new();
        for i in 0..5 {
            for user in ["erin", "finn"] {
                cart::add_item(&store, user, tea, 1).unwrap();
                ids.push(place_ok(&store, user, &format!("k{i}")).order.id);
            }
        }
        set_status(&store, ids[3], OrderStatus::Paid).unwrap();
        set_status(&store, ids[8], OrderStatus::Paid).unwrap();
        ids.reverse();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = list_all(&store, None, 4, &token).unwrap();
            assert!(page.orders.len() <= 4);
            seen.extend(page.orders.iter().map(|o| o.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen, ids);
        let paid = list_all(&store, Some(OrderStatus::Paid), 0, "").unwrap();
        let paid: Vec<_> = paid.orders.iter().map(|o| o.id).collect();
        assert_eq!(paid, vec![ids[1], ids[6]]);
        assert!(matches!(
            list_all(&store, None, 0, "u-1"),
            Err(ShopError::InvalidArgument(_))
        ));
    }

    /// 200 threads of different users race for 10 units: exactly 10 orders, stock 0.
    #[test]
    fn oversell_race() {
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        let hot = product(&store, 999, 10);
        for u in 0..200 {
            cart::add_item(&store, &format!("user{u}"), hot, 1).unwrap();
        }
        let barrier = Arc::new(Barrier::new(200));
        let threads: Vec<_> = (0..200)
            .map(|u| {
                let store = store.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    place(&store, &format!("user{u}"), "checkout")
                        .and_then(|c| c.durable_blocking())
                })
            })
            .collect();
        let mut won = 0;
        for t in threads {
            match t.join().unwrap() {
                Ok(_) => won += 1,
                Err(ShopError::FailedPrecondition(msg)) => {
                    assert!(msg.contains("insufficient stock"), "{msg}")
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(won, 10);
        assert_eq!(catalog::get(&store, hot).unwrap().stock, 0);
        let orders = store.tree(TreeName::Orders).len();
        assert_eq!(orders, 10);
    }
}
