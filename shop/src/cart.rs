//! Carts: one per user, a set of (product, quantity) lines priced at read time.
//!
//! Invariants of a stored cart: at most [`MAX_CART_LINES`] lines, sorted by product id,
//! each quantity in 1..=[`MAX_LINE_QUANTITY`]. When a line is added or changed its
//! quantity is checked against the product's *current* stock and its currency against the
//! rest of the cart (a cart holds one currency), but stock is only reserved when the order
//! is placed: the cart can go stale (stock sold to someone else, product deleted or
//! re-priced) and PlaceOrder re-checks everything in its own transaction.
//!
//! Read-side pricing: [`CartView`] lines use current prices and names; a line whose
//! product was deleted shows name "", price 0 and stock 0. If re-pricing left the cart
//! with several currencies, the view's currency is "" and its total 0 (PlaceOrder then
//! refuses the cart).

use serde::{Deserialize, Serialize};

use crate::catalog::{self, Product};
use crate::codec::Record;
use crate::error::{Result, ShopError};
use crate::keys::ProductId;
#[cfg(test)]
use crate::store::Committed;
use crate::store::{Store, Tx, TxResult, WriteOp};
use crate::validate::{self, MAX_CART_LINES, MAX_LINE_QUANTITY};
use crate::wal::TreeName;

/// One stored cart line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartItem {
    /// The product.
    pub product_id: ProductId,
    /// Units wanted, 1..=MAX_LINE_QUANTITY.
    pub quantity: u32,
}

/// A cart as stored (no prices: they are looked up when read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCart {
    /// Lines sorted by product id.
    pub items: Vec<CartItem>,
}

/// One priced line of a cart view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    /// The product.
    pub product_id: ProductId,
    /// Current product name ("" if deleted).
    pub name: String,
    /// Units wanted.
    pub quantity: u32,
    /// Current unit price (0 if deleted).
    pub unit_price_minor: i64,
    /// `quantity × unit_price_minor`.
    pub line_total_minor: i64,
    /// Units in stock now (0 if deleted).
    pub stock: u64,
}

/// A cart priced at current prices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CartView {
    /// Owner.
    pub user_id: String,
    /// Lines in product id order.
    pub lines: Vec<CartLine>,
    /// Sum of line totals (0 when currencies are mixed).
    pub total_minor: i64,
    /// The cart's currency ("" when empty or mixed).
    pub currency: String,
}

/// Adds `quantity` units of a product, merging with an existing line.
/// (One transaction of its own, for tests; the shop queues `add_item_op` instead.)
#[cfg(test)]
pub fn add_item(
    store: &Store,
    user: &str,
    product_id: ProductId,
    quantity: i64,
) -> Result<Committed<CartView>> {
    store.transact(add_item_op(user.to_string(), product_id, quantity)?)
}

/// Validates an add; the returned write performs it (see [`WriteOp`]).
pub fn add_item_op(
    user: String,
    product_id: ProductId,
    quantity: i64,
) -> Result<impl WriteOp<CartView>> {
    validate::user_id(&user)?;
    let quantity = validate::quantity(quantity)?;
    Ok(move |tx: &Tx<'_>| {
        let user = user.as_str();
        let product = catalog::must_load(tx, product_id)?;
        let mut cart = load(tx, user)?;
        let pos = cart
            .items
            .binary_search_by_key(&product_id, |i| i.product_id);
        let current = pos.map_or(0, |p| cart.items[p].quantity);
        let merged = i64::from(current) + i64::from(quantity);
        if merged > MAX_LINE_QUANTITY {
            return Err(ShopError::invalid(format!(
                "cart would hold {merged} of product {product_id}; the per-line limit is {MAX_LINE_QUANTITY}"
            ))
            .into());
        }
        check_stock(&product, merged)?;
        match pos {
            Ok(p) => cart.items[p].quantity = merged as u32,
            Err(p) => {
                if cart.items.len() >= MAX_CART_LINES {
                    return Err(ShopError::precondition(format!(
                        "cart already holds {MAX_CART_LINES} different products"
                    ))
                    .into());
                }
                check_currency(tx, &cart, &product)?;
                cart.items.insert(
                    p,
                    CartItem {
                        product_id,
                        quantity: merged as u32,
                    },
                );
            }
        }
        save(tx, user, &cart)?;
        view_in_tx(tx, user, &cart)
    })
}

/// Sets the quantity of a line already in the cart (use [`remove_item`] to drop it).
/// (One transaction of its own, for tests; the shop queues `set_quantity_op` instead.)
#[cfg(test)]
pub fn set_quantity(
    store: &Store,
    user: &str,
    product_id: ProductId,
    quantity: i64,
) -> Result<Committed<CartView>> {
    store.transact(set_quantity_op(user.to_string(), product_id, quantity)?)
}

/// Validates a quantity change; the returned write performs it (see [`WriteOp`]).
pub fn set_quantity_op(
    user: String,
    product_id: ProductId,
    quantity: i64,
) -> Result<impl WriteOp<CartView>> {
    validate::user_id(&user)?;
    let quantity = validate::quantity(quantity)?;
    Ok(move |tx: &Tx<'_>| {
        let user = user.as_str();
        let mut cart = load(tx, user)?;
        let pos = line_position(&cart, user, product_id)?;
        let product = catalog::must_load(tx, product_id)?;
        check_stock(&product, i64::from(quantity))?;
        cart.items[pos].quantity = quantity;
        save(tx, user, &cart)?;
        view_in_tx(tx, user, &cart)
    })
}

/// Removes a line; a product not in the cart is `NotFound`.
/// (One transaction of its own, for tests; the shop queues `remove_item_op` instead.)
#[cfg(test)]
pub fn remove_item(
    store: &Store,
    user: &str,
    product_id: ProductId,
) -> Result<Committed<CartView>> {
    store.transact(remove_item_op(user.to_string(), product_id)?)
}

/// Validates a removal; the returned write performs it (see [`WriteOp`]).
pub fn remove_item_op(user: String, product_id: ProductId) -> Result<impl WriteOp<CartView>> {
    validate::user_id(&user)?;
    Ok(move |tx: &Tx<'_>| {
        let user = user.as_str();
        let mut cart = load(tx, user)?;
        let pos = line_position(&cart, user, product_id)?;
        cart.items.remove(pos);
        save(tx, user, &cart)?;
        view_in_tx(tx, user, &cart)
    })
}

/// Empties a cart (a no-op, with no LSN, if it is already empty).
/// (One transaction of its own, for tests; the shop queues `clear_op` instead.)
#[cfg(test)]
pub fn clear(store: &Store, user: &str) -> Result<Committed<CartView>> {
    store.transact(clear_op(user.to_string())?)
}

/// Validates the user; the returned write empties the cart (see [`WriteOp`]).
pub fn clear_op(user: String) -> Result<impl WriteOp<CartView>> {
    validate::user_id(&user)?;
    Ok(move |tx: &Tx<'_>| {
        if tx.get(TreeName::Carts, user.as_bytes())?.is_some() {
            tx.delete(TreeName::Carts, user.as_bytes())?;
        }
        Ok(CartView {
            user_id: user.clone(),
            ..Default::default()
        })
    })
}

/// Reads and prices a cart (empty if the user has none).
pub fn get(store: &Store, user: &str) -> Result<CartView> {
    validate::user_id(user)?;
    let cart: StoredCart = match store.tree(TreeName::Carts).get(user.as_bytes())? {
        Some(bytes) => StoredCart::decode(&bytes)?,
        None => StoredCart::default(),
    };
    let products = cart
        .items
        .iter()
        .map(
            |item| match store.tree(TreeName::Products).get(item.product_id.key())? {
                Some(bytes) => Product::decode(&bytes).map(Some),
                None => Ok(None),
            },
        )
        .collect::<Result<Vec<Option<Product>>>>()?;
    price(user, &cart, &products)
}

/// Loads a cart inside a transaction (empty if absent).
pub(crate) fn load(tx: &Tx<'_>, user: &str) -> TxResult<StoredCart> {
    Ok(tx.get_record(user.as_bytes())?.unwrap_or_default())
}

/// Saves a cart inside a transaction; an empty cart is deleted.
fn save(tx: &Tx<'_>, user: &str, cart: &StoredCart) -> TxResult<()> {
    if cart.items.is_empty() {
        tx.delete(TreeName::Carts, user.as_bytes())
    } else {
        tx.put_record(user.as_bytes(), cart)
    }
}

fn line_position(cart: &StoredCart, user: &str, product_id: ProductId) -> Result<usize> {
    cart.items
        .binary_search_by_key(&product_id, |i| i.product_id)
        .map_err(|_| {
            ShopError::not_found(format!("product {product_id} is not in the cart of {user}"))
        })
}

fn check_stock(product: &Product, wanted: i64) -> Result<()> {
    if wanted as u64 > product.stock {
        return Err(ShopError::precondition(format!(
            "cart would hold {wanted} of product {} but only {} are in stock",
            product.id, product.stock
        )));
    }
    Ok(())
}

fn check_currency(tx: &Tx<'_>, cart: &StoredCart, product: &Product) -> TxResult<()> {
    for item in &cart.items {
        if let Some(other) = catalog::load(tx, item.product_id)? {
            if other.currency != product.currency {
                return Err(ShopError::precondition(format!(
                    "cart holds prices in {}; product {} is priced in {}",
                    other.currency, product.id, product.currency
                ))
                .into());
            }
        }
    }
    Ok(())
}

fn view_in_tx(tx: &Tx<'_>, user: &str, cart: &StoredCart) -> TxResult<CartView> {
    let products = cart
        .items
        .iter()
        .map(|item| catalog::load(tx, item.product_id))
        .collect::<TxResult<Vec<_>>>()?;
    Ok(price(user, cart, &products)?)
}

/// Prices a cart given its products (`None` = deleted), aligned with `cart.items`.
fn price(user: &str, cart: &StoredCart, products: &[Option<Product>]) -> Result<CartView> {
    let mut view = CartView {
        user_id: user.to_string(),
        ..Default::default()
    };
    let mut currency: Option<&str> = None;
    let mut mixed = false;
    for (item, product) in cart.items.iter().zip(products) {
        let (name, unit, stock) = match product {
            Some(p) => {
                match currency {
                    None => currency = Some(&p.currency),
                    Some(c) if c != p.currency => mixed = true,
                    Some(_) => {}
                }
                (p.name.clone(), p.price_minor, p.stock)
            }
            None => (String::new(), 0, 0),
        };
        let line_total = unit
            .checked_mul(i64::from(item.quantity))
            .ok_or_else(|| ShopError::internal("cart line total overflows"))?;
        view.total_minor = view
            .total_minor
            .checked_add(line_total)
            .ok_or_else(|| ShopError::internal("cart total overflows"))?;
        view.lines.push(CartLine {
            product_id: item.product_id,
            name,
            quantity: item.quantity,
            unit_price_minor: unit,
            line_total_minor: line_total,
            stock,
        });
    }
    if mixed {
        view.total_minor = 0;
    } else if let Some(c) = currency {
        view.currency = c.to_string();
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{NewProduct, ProductPatch};
    use crate::store::test::temp_store;

    fn product(store: &Store, price: i64, stock: i64, currency: &str) -> ProductId {
        let new = NewProduct {
            name: format!("p{price}"),
            price_minor: price,
            stock,
            currency: currency.into(),
            ..Default::default()
        };
        catalog::create(store, new)
            .unwrap()
            .durable_blocking()
            .unwrap()
            .value
            .id
    }

    /// Adding merges quantities, totals follow current prices, set/remove/clear work.
    #[test]
    fn cart_flow() {
        let (_dir, store) = temp_store();
        let tea = product(&store, 250, 10, "EUR");
        let mug = product(&store, 1000, 3, "EUR");
        add_item(&store, "alice", mug, 1).unwrap();
        add_item(&store, "alice", tea, 2).unwrap();
        let view = add_item(&store, "alice", tea, 3).unwrap().value;
        assert_eq!(view.lines.len(), 2);
        assert_eq!(view.lines[0].product_id, tea, "lines sorted by product id");
        assert_eq!(view.lines[0].quantity, 5);
        assert_eq!(view.lines[0].line_total_minor, 1250);
        assert_eq!(view.total_minor, 2250);
        assert_eq!(view.currency, "EUR");
        let patch = ProductPatch {
            price_minor: Some(300),
            ..Default::default()
        };
        catalog::update(&store, tea, patch).unwrap();
        assert_eq!(get(&store, "alice").unwrap().total_minor, 2500);
        let view = set_quantity(&store, "alice", mug, 3).unwrap().value;
        assert_eq!(view.total_minor, 1500 + 3000);
        let view = remove_item(&store, "alice", tea).unwrap().value;
        assert_eq!(view.lines.len(), 1);
        let cleared = clear(&store, "alice").unwrap();
        assert!(cleared.lsn.is_some());
        assert_eq!(get(&store, "alice").unwrap().lines, vec![]);
        assert_eq!(
            clear(&store, "alice").unwrap().lsn,
            None,
            "clearing an empty cart is a no-op"
        );
    }

    /// Bad cart requests get the right category and change nothing.
    #[test]
    fn bad_cart_requests_table() {
        let (_dir, store) = temp_store();
        let tea = product(&store, 250, 10, "EUR");
        let dollar = product(&store, 100, 10, "USD");
        add_item(&store, "bob", tea, 4).unwrap();
        let before = (store.last_lsn().unwrap(), get(&store, "bob").unwrap());
        type Op = Box<dyn Fn(&Store) -> Result<Committed<CartView>>>;
        type Check = fn(&ShopError) -> bool;
        let cases: Vec<(&str, Op, Check)> = vec![
            (
                "zero qty",
                Box::new(move |s| add_item(s, "bob", tea, 0)),
                |e| matches!(e, ShopError::InvalidArgument(_)),
            ),
            (
                "negative qty",
                Box::new(move |s| add_item(s, "bob", tea, -2)),
                |e| matches!(e, ShopError::InvalidArgument(_)),
            ),
            (
                "huge qty",
                Box::new(move |s| add_item(s, "bob", tea, i64::MAX)),
                |e| matches!(e, ShopError::InvalidArgument(_)),
            ),
            (
                "above stock after merge",
                Box::new(move |s| add_item(s, "bob", tea, 7)),
                |e| matches!(e, ShopError::FailedPrecondition(_)),
            ),
            (
                "unknown product",
                Box::new(|s| add_item(s, "bob", ProductId(999), 1)),
                |e| matches!(e, ShopError::NotFound(_)),
            ),
            (
                "bad user",
                Box::new(move |s| add_item(s, "bob smith", tea, 1)),
                |e| matches!(e, ShopError::InvalidArgument(_)),
            ),
            (
                "mixed currency",
                Box::new(move |s| add_item(s, "bob", dollar, 1)),
                |e| matches!(e, ShopError::FailedPrecondition(_)),
            ),
            (
                "set above stock",
                Box::new(move |s| set_quantity(s, "bob", tea, 11)),
                |e| matches!(e, ShopError::FailedPrecondition(_)),
            ),
            (
                "set zero",
                Box::new(move |s| set_quantity(s, "bob", tea, 0)),
                |e| matches!(e, ShopError::InvalidArgument(_)),
            ),
            (
                "set missing line",
                Box::new(move |s| set_quantity(s, "bob", dollar, 1)),
                |e| matches!(e, ShopError::NotFound(_)),
            ),
            (
                "remove missing line",
                Box::new(move |s| remove_item(s, "bob", dollar)),
                |e| matches!(e, ShopError::NotFound(_)),
            ),
        ];
        for (label, op, want) in cases {
            match op(&store) {
                Ok(_) => panic!("{label}: unexpectedly succeeded"),
                Err(e) => assert!(want(&e), "{label}: {e:?}"),
            }
        }
        assert_eq!(
            (store.last_lsn().unwrap(), get(&store, "bob").unwrap()),
            before
        );
    }

    /// A deleted product stays visible in the cart as an unavailable line.
    #[test]
    fn deleted_product_line() {
        let (_dir, store) = temp_store();
        let tea = product(&store, 250, 10, "EUR");
        add_item(&store, "carol", tea, 1).unwrap();
        catalog::delete(&store, tea).unwrap();
        let view = get(&store, "carol").unwrap();
        assert_eq!(view.lines[0].stock, 0);
        assert_eq!(view.lines[0].name, "");
        assert_eq!(view.total_minor, 0);
    }
}
