//! Products: create, read, partial update, delete, paged listing.
//!
//! Invariants: a stored product always satisfies the `validate` limits (name, price,
//! currency, stock ≥ 0); ids come from the replicated `last_product_id` counter and are
//! never reused. Every mutation validates its input *before* opening a transaction, so a
//! rejected request changes nothing.
//!
//! Listing is in id order with a cursor (the last id returned) and is a range scan
//! starting just past the cursor, so its cost depends on the page size, not the catalogue
//! size. The optional `name_contains` filter (case-insensitive substring) examines at most
//! [`MAX_SCAN_PER_PAGE`] products per call; when that budget runs out before the page is
//! full the page comes back short with a token to continue — latency stays bounded even
//! for a filter that matches nothing in a huge catalogue.
//!
//! Deleting a product does not touch carts (that would need a scan of all carts): a cart
//! line for a deleted product shows stock 0 and blocks PlaceOrder until removed. Orders
//! keep their price snapshot.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::codec::Record;
use crate::error::{Result, ShopError};
use crate::keys::{self, ProductId, LAST_PRODUCT_ID};
#[cfg(test)]
use crate::store::Committed;
use crate::store::{Store, Tx, TxResult, WriteOp};
use crate::validate::{self, DEFAULT_CURRENCY, MAX_SCAN_PER_PAGE};
use crate::wal::TreeName;

/// A product as stored and returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Shop-assigned id.
    pub id: ProductId,
    /// Display name (validated).
    pub name: String,
    /// Free text, may be empty.
    pub description: String,
    /// Unit price in minor units of `currency`.
    pub price_minor: i64,
    /// ISO-4217-shaped currency code.
    pub currency: String,
    /// Units available; never negative by type.
    pub stock: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Last change (including stock changes by orders), ms since the Unix epoch.
    pub updated_at_ms: i64,
}

/// Input of CreateProduct, unvalidated (raw numbers from the wire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewProduct {
    /// Display name.
    pub name: String,
    /// Description (may be empty).
    pub description: String,
    /// Price in minor units.
    pub price_minor: i64,
    /// Currency; empty means [`DEFAULT_CURRENCY`].
    pub currency: String,
    /// Initial stock.
    pub stock: i64,
}

/// Input of UpdateProduct: only the `Some` fields change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New price in minor units.
    pub price_minor: Option<i64>,
    /// New currency.
    pub currency: Option<String>,
    /// New absolute stock level.
    pub stock: Option<i64>,
}

impl ProductPatch {
    fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.description.is_none()
            && self.price_minor.is_none()
            && self.currency.is_none()
            && self.stock.is_none()
    }
}

/// A ListProducts request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductQuery {
    /// Requested page size (0 = default; clamped to the maximum).
    pub page_size: u32,
    /// Token from the previous page, empty for the first.
    pub page_token: String,
    /// Case-insensitive substring filter on the name; empty = none.
    pub name_contains: String,
}

/// One page of products.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductPage {
    /// Products in id order.
    pub products: Vec<Product>,
    /// Token for the next page; empty on the last page.
    pub next_page_token: String,
}

/// Validates and creates a product.
/// (One transaction of its own, for tests; the shop queues `create_op` instead.)
#[cfg(test)]
pub fn create(store: &Store, new: NewProduct) -> Result<Committed<Product>> {
    store.transact(create_op(new)?)
}

/// Validates a new product; the returned write creates it (see [`WriteOp`]).
pub fn create_op(new: NewProduct) -> Result<impl WriteOp<Product>> {
    validate::name(&new.name)?;
    validate::description(&new.description)?;
    let price_minor = validate::price_minor(new.price_minor)?;
    let currency = if new.currency.is_empty() {
        DEFAULT_CURRENCY.to_string()
    } else {
        validate::currency(&new.currency)?;
        new.currency.clone()
    };
    let stock = validate::stock(new.stock)?;
    Ok(move |tx: &Tx<'_>| {
        let id = ProductId(tx.next_id(LAST_PRODUCT_ID)?);
        let product = Product {
            id,
            name: new.name.clone(),
            description: new.description.clone(),
            price_minor,
            currency: currency.clone(),
            stock,
            created_at_ms: tx.now_ms(),
            updated_at_ms: tx.now_ms(),
        };
        save(tx, &product)?;
        Ok(product)
    })
}

/// Validates a patch and applies it; an empty patch is `InvalidArgument`.
/// (One transaction of its own, for tests; the shop queues `update_op` instead.)
#[cfg(test)]
pub fn update(store: &Store, id: ProductId, patch: ProductPatch) -> Result<Committed<Product>> {
    store.transact(update_op(id, patch)?)
}

/// Validates a patch; the returned write applies it (see [`WriteOp`]).
pub fn update_op(id: ProductId, patch: ProductPatch) -> Result<impl WriteOp<Product>> {
    if patch.is_empty() {
        return Err(ShopError::invalid("update sets no fields"));
    }
    if let Some(name) = &patch.name {
        validate::name(name)?;
    }
    if let Some(description) = &patch.description {
        validate::description(description)?;
    }
    if let Some(price) = patch.price_minor {
        validate::price_minor(price)?;
    }
    if let Some(currency) = &patch.currency {
        validate::currency(currency)?;
    }
    let stock = patch.stock.map(validate::stock).transpose()?;
    Ok(move |tx: &Tx<'_>| {
        let mut product = must_load(tx, id)?;
        if let Some(name) = &patch.name {
            product.name.clone_from(name);
        }
        if let Some(description) = &patch.description {
            product.description.clone_from(description);
        }
        if let Some(price) = patch.price_minor {
            product.price_minor = price;
        }
        if let Some(currency) = &patch.currency {
            product.currency.clone_from(currency);
        }
        if let Some(stock) = stock {
            product.stock = stock;
        }
        product.updated_at_ms = tx.now_ms();
        save(tx, &product)?;
        Ok(product)
    })
}

/// Deletes a product; unknown ids are `NotFound`.
/// (One transaction of its own, for tests; the shop queues `delete_op` instead.)
#[cfg(test)]
pub fn delete(store: &Store, id: ProductId) -> Result<Committed<()>> {
    store.transact(delete_op(id))
}

/// The write that deletes a product (see [`WriteOp`]).
pub fn delete_op(id: ProductId) -> impl WriteOp<()> {
    move |tx: &Tx<'_>| {
        must_load(tx, id)?;
        tx.delete(TreeName::Products, &id.key())
    }
}

/// Reads one product; unknown ids are `NotFound`.
pub fn get(store: &Store, id: ProductId) -> Result<Product> {
    match store.tree(TreeName::Products).get(id.key())? {
        Some(bytes) => Product::decode(&bytes),
        None => Err(not_found(id)),
    }
}

/// Lists one page (see module docs for the scan bound and token semantics).
pub fn list(store: &Store, query: &ProductQuery) -> Result<ProductPage> {
    validate::name_filter(&query.name_contains)?;
    let page_size = validate::page_size(query.page_size);
    let after: Option<ProductId> = keys::page_after(&query.page_token)?;
    let filter = query.name_contains.to_lowercase();
    let start = match after {
        Some(id) => Bound::Excluded(id.key()),
        None => Bound::Unbounded,
    };
    let mut scan = store
        .tree(TreeName::Products)
        .range::<[u8; 8], _>((start, Bound::Unbounded));
    let mut page = ProductPage::default();
    let mut scanned = 0usize;
    let mut last_scanned = None;
    while page.products.len() < page_size {
        if !filter.is_empty() && scanned >= MAX_SCAN_PER_PAGE {
            // Budget spent: hand back a token to continue after what we examined.
            if let Some(id) = last_scanned {
                page.next_page_token = ProductId::to_string(&id);
            }
            return Ok(page);
        }
        let Some(item) = scan.next() else {
            return Ok(page); // end of catalogue: no token
        };
        let (_, bytes) = item?;
        let product: Product = Product::decode(&bytes)?;
        scanned += 1;
        last_scanned = Some(product.id);
        if filter.is_empty() || product.name.to_lowercase().contains(&filter) {
            page.products.push(product);
        }
    }
    // Page full: only hand out a token if something follows.
    if scan.next().transpose()?.is_some() {
        if let Some(last) = page.products.last() {
            page.next_page_token = last.id.to_string();
        }
    }
    Ok(page)
}

/// Loads a product inside a transaction.
pub(crate) fn load(tx: &Tx<'_>, id: ProductId) -> TxResult<Option<Product>> {
    tx.get_record(&id.key())
}

/// Loads a product inside a transaction; absent is `NotFound`.
pub(crate) fn must_load(tx: &Tx<'_>, id: ProductId) -> TxResult<Product> {
    load(tx, id)?.ok_or_else(|| not_found(id).into())
}

/// Writes a product inside a transaction.
pub(crate) fn save(tx: &Tx<'_>, product: &Product) -> TxResult<()> {
    tx.put_record(&product.id.key(), product)
}

fn not_found(id: ProductId) -> ShopError {
    ShopError::not_found(format!("product {id} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test::temp_store;

    pub(crate) fn new_product(name: &str, price_minor: i64, stock: i64) -> NewProduct {
        NewProduct {
            name: name.into(),
            description: String::new(),
            price_minor,
            currency: String::new(),
            stock,
        }
    }

    fn create_ok(store: &Store, name: &str) -> Product {
        create(store, new_product(name, 100, 5))
            .unwrap()
            .durable_blocking()
            .unwrap()
            .value
    }

    /// Create, get, partial update and delete round-trip; ids are sequential.
    #[test]
    fn crud() {
        let (_dir, store) = temp_store();
        let p = create_ok(&store, "Tea");
        assert_eq!(p.id, ProductId(1));
        assert_eq!(p.currency, "EUR");
        assert_eq!(get(&store, p.id).unwrap(), p);
        let patch = ProductPatch {
            price_minor: Some(250),
            stock: Some(0),
            ..Default::default()
        };
        let updated = update(&store, p.id, patch)
            .unwrap()
            .durable_blocking()
            .unwrap();
        assert_eq!(updated.value.price_minor, 250);
        assert_eq!(updated.value.stock, 0);
        assert_eq!(updated.value.name, "Tea");
        assert_eq!(updated.lsn, Some(2));
        delete(&store, p.id).unwrap().durable_blocking().unwrap();
        assert!(matches!(get(&store, p.id), Err(ShopError::NotFound(_))));
        assert!(matches!(delete(&store, p.id), Err(ShopError::NotFound(_))));
        assert_eq!(create_ok(&store, "Coffee").id, ProductId(2));
    }

    /// Bad input is rejected with InvalidArgument/NotFound and writes nothing.
    #[test]
    fn bad_input_changes_nothing() {
        let (_dir, store) = temp_store();
        let p = create_ok(&store, "Tea");
        let lsn = store.last_lsn().unwrap();
        let creates = [
            new_product("", 1, 1),
            new_product("bad\u{0}name", 1, 1),
            new_product(&"n".repeat(201), 1, 1),
            new_product("ok", -1, 1),
            new_product("ok", i64::MAX, 1),
            new_product("ok", 1, -1),
            NewProduct {
                currency: "euro".into(),
                ..new_product("ok", 1, 1)
            },
        ];
        for new in creates {
            let err = create(&store, new.clone()).err();
            assert!(
                matches!(err, Some(ShopError::InvalidArgument(_))),
                "{new:?}: {err:?}"
            );
        }
        let empty = update(&store, p.id, ProductPatch::default()).err();
        assert!(matches!(empty, Some(ShopError::InvalidArgument(_))));
        let neg = ProductPatch {
            stock: Some(-1),
            ..Default::default()
        };
        assert!(matches!(
            update(&store, p.id, neg).err(),
            Some(ShopError::InvalidArgument(_))
        ));
        let rename = ProductPatch {
            name: Some("x".into()),
            ..Default::default()
        };
        let missing = update(&store, ProductId(99), rename).err();
        assert!(matches!(missing, Some(ShopError::NotFound(_))));
        assert_eq!(store.last_lsn().unwrap(), lsn);
        assert_eq!(get(&store, p.id).unwrap(), p);
    }

    /// Paging walks the whole catalogue once; the filter is case-insensitive; bad tokens
    /// are InvalidArgument.
    #[test]
    fn list_pages_and_filters() {
        let (_dir, store) = temp_store();
        for i in 0..25 {
            let name = if i % 5 == 0 {
                format!("Green Tea {i}")
            } else {
                format!("Mug {i}")
            };
            create_ok(&store, &name);
        }
        let mut seen = Vec::new();
        let mut query = ProductQuery {
            page_size: 10,
            ..Default::default()
        };
        loop {
            let page = list(&store, &query).unwrap();
            assert!(page.products.len() <= 10);
            seen.extend(page.products.iter().map(|p| p.id.0));
            if page.next_page_token.is_empty() {
                break;
            }
            query.page_token = page.next_page_token;
        }
        assert_eq!(seen, (1..=25).collect::<Vec<_>>());
        let teas = list(
            &store,
            &ProductQuery {
                name_contains: "gREEN t".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(teas.products.len(), 5);
        assert!(teas.next_page_token.is_empty());
        let exact = list(
            &store,
            &ProductQuery {
                page_size: 25,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(exact.products.len(), 25);
        assert!(
            exact.next_page_token.is_empty(),
            "no token when nothing follows"
        );
        for token in ["garbage", "o-1", "p-"] {
            let q = ProductQuery {
                page_token: token.into(),
                ..Default::default()
            };
            assert!(
                matches!(list(&store, &q), Err(ShopError::InvalidArgument(_))),
                "{token}"
            );
        }
    }
}
