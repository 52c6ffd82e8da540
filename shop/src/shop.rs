//! The async face of the shop domain: what the gRPC service (and the bench) call.
//!
//! Reads run on tokio's blocking pool (a sled call may wait on sled's global lock while a
//! flush runs, so it must not sit on an async worker). Writes are validated on the
//! caller's task (the domain's `*_op` functions), then queued to ONE writer thread through
//! a bounded queue ([`WRITE_QUEUE_CAPACITY`]; a full queue makes the caller wait, it never
//! drops work). The writer takes everything queued (up to [`MAX_WRITE_BATCH`]) and runs
//! it as ONE batch of the store's write path ([`Store::transact_batch`]: each write keeps
//! its own LSN and WAL entry and fails alone; the batch is appended to the WAL with one
//! `fdatasync`, then applied to sled), and only then replies to every caller of the
//! batch: group commit without a hand-off; writes that arrive during the sync form the
//! next batch. If the WAL write fails, every write of the batch fails with `Unavailable`
//! (nothing applied, nothing acknowledged) and the store refuses writes until restarted.
//!
//! A method returning `Ok(Written { lsn, .. })` means the write is on disk; `lsn: None`
//! means it changed nothing. Errors never leave partial writes behind. The writer thread
//! stops when the last `Shop` handle is dropped.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::account::{self, Account};
use crate::cart::{self, CartView};
use crate::catalog::{self, NewProduct, Product, ProductPage, ProductPatch, ProductQuery};
use crate::error::{Result, ShopError};
use crate::keys::{OrderId, ProductId, UserId};
use crate::order::{self, Order, OrderPage, OrderStatus, Placed};
use crate::password::{Hasher, Password};
use crate::store::{BatchOutcome, Store, StoreConfig, Tx, TxResult, WriteOp, Written};
use crate::throttle::SignInThrottle;
use crate::wal::Lsn;

/// Writes queued for the writer thread before callers wait.
pub const WRITE_QUEUE_CAPACITY: usize = 1024;
/// Most writes the writer commits in one transaction before it flushes and replies.
pub const MAX_WRITE_BATCH: usize = 256;

/// A write waiting in the queue: its body, and how to answer its caller.
trait QueuedWrite: Send {
    /// Runs the write inside the batch transaction; may run again if sled retries it.
    fn run(&self, tx: &Tx<'_>) -> TxResult<()>;
    /// Answers the caller once the batch's commit (in `term`) and flush are known.
    fn finish(self: Box<Self>, outcome: Result<Option<Lsn>>, term: u64);
}

/// The queued form of a [`WriteOp`] returning `T`.
struct Queued<T, F> {
    op: F,
    /// What the last run of `op` returned.
    value: RefCell<Option<T>>,
    reply: oneshot::Sender<Result<Written<T>>>,
}

impl<T: Send + 'static, F: WriteOp<T>> QueuedWrite for Queued<T, F> {
    fn run(&self, tx: &Tx<'_>) -> TxResult<()> {
        let value = (self.op)(tx)?;
        *self.value.borrow_mut() = Some(value);
        Ok(())
    }

    fn finish(self: Box<Self>, outcome: Result<Option<Lsn>>, term: u64) {
        let Self { value, reply, .. } = *self;
        let result = outcome.and_then(|lsn| {
            let value = value
                .into_inner()
                .ok_or_else(|| ShopError::internal("a committed write left no result"))?;
            Ok(Written { value, lsn, term })
        });
        // A dropped receiver means the caller went away: the write stands, unacknowledged.
        let _ = reply.send(result);
    }
}

/// Cheap-to-clone handle on the shop's store.
#[derive(Clone)]
pub struct Shop {
    store: Arc<Store>,
    writer: Arc<Writer>,
    /// Password hashing, bounded (see `password`).
    hasher: Hasher,
    sign_ins: Arc<SignInThrottle>,
}

/// The writer thread; dropping the last handle closes the queue and joins the thread, so
/// the store is released deterministically (a restart can reopen the directory at once).
struct Writer {
    write_tx: Option<mpsc::Sender<Box<dyn QueuedWrite>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.write_tx.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("shop writer thread panicked");
            }
        }
    }
}

/// The writer thread's loop (module docs).
fn run_writer(
    store: &Store,
    write_rx: &mut mpsc::Receiver<Box<dyn QueuedWrite>>,
    linger: Duration,
) {
    let mut batch: Vec<Box<dyn QueuedWrite>> = Vec::with_capacity(MAX_WRITE_BATCH);
    while let Some(first) = write_rx.blocking_recv() {
        batch.push(first);
        if !linger.is_zero() {
            std::thread::sleep(linger);
        }
        while batch.len() < MAX_WRITE_BATCH {
            match write_rx.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let outcomes = store.transact_batch(batch.len(), |i, tx| {
            // A panicking write (a bug) must not take the writer or its batch down: it is
            // rolled back like any failed write and its caller gets an error.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batch[i].run(tx)))
                .unwrap_or_else(|_| {
                    tracing::error!("a shop write panicked; its caller gets an error");
                    Err(ShopError::internal("the write panicked").into())
                })
        });
        let BatchOutcome {
            term,
            writes: outcomes,
        } = outcomes.unwrap_or_else(|e| {
            tracing::error!(error = %e, batch = batch.len(), "batch commit failed");
            BatchOutcome {
                term: store.term(),
                writes: vec![Err(e); batch.len()],
            }
        });
        for (write, outcome) in batch.drain(..).zip(outcomes) {
            write.finish(outcome, term);
        }
    }
    let stats = store.commit_stats();
    tracing::info!(
        syncs = stats.flushes,
        writes = stats.writes,
        sync_ms = stats.flush_micros / 1000,
        "shop writer stopped"
    );
}

impl Shop {
    /// Opens the store at `config.path`.
    pub fn open(config: &StoreConfig) -> Result<Self> {
        Self::with_linger(Arc::new(Store::open(config)?), config.linger)
    }

    /// Wraps an already open store and starts its writer thread.
    pub fn new(store: Arc<Store>) -> Result<Self> {
        Self::with_linger(store, crate::store::DEFAULT_LINGER)
    }

    /// [`new`](Self::new) with a group-commit linger: the writer waits this long after the
    /// first queued write before it takes the batch.
    pub fn with_linger(store: Arc<Store>, linger: Duration) -> Result<Self> {
        let (write_tx, mut write_rx) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let writer_store = Arc::clone(&store);
        let thread = std::thread::Builder::new()
            .name("shop-writer".into())
            .spawn(move || run_writer(&writer_store, &mut write_rx, linger))
            .map_err(|e| ShopError::internal(format!("cannot start writer thread: {e}")))?;
        let writer = Writer {
            write_tx: Some(write_tx),
            thread: Some(thread),
        };
        Ok(Self {
            store,
            writer: Arc::new(writer),
            hasher: Hasher::default(),
            sign_ins: Arc::default(),
        })
    }

    /// The underlying store (replication uses its WAL API).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    async fn read<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let _view = store.read_view();
            op(&store)
        })
        .await?
    }

    /// Queues a validated write and waits until it is durable (or failed).
    async fn write<T: Send + 'static>(&self, op: impl WriteOp<T>) -> Result<Written<T>> {
        let (reply, done_rx) = oneshot::channel();
        let queued: Box<dyn QueuedWrite> = Box::new(Queued {
            op,
            value: RefCell::new(None),
            reply,
        });
        let stopped = || ShopError::Unavailable("the shop writer has stopped".into());
        let write_tx = self.writer.write_tx.as_ref().ok_or_else(stopped)?;
        write_tx.send(queued).await.map_err(|_| stopped())?;
        let written = done_rx.await.map_err(|_| stopped())??;
        tracing::debug!(lsn = ?written.lsn, "write durable");
        Ok(written)
    }

    /// Creates a product.
    pub async fn create_product(&self, new: NewProduct) -> Result<Written<Product>> {
        self.write(catalog::create_op(new)?).await
    }

    /// Reads a product.
    pub async fn get_product(&self, id: ProductId) -> Result<Product> {
        self.read(move |s| catalog::get(s, id)).await
    }

    /// Applies a partial update.
    pub async fn update_product(
        &self,
        id: ProductId,
        patch: ProductPatch,
    ) -> Result<Written<Product>> {
        self.write(catalog::update_op(id, patch)?).await
    }

    /// Deletes a product.
    pub async fn delete_product(&self, id: ProductId) -> Result<Written<()>> {
        self.write(catalog::delete_op(id)).await
    }

    /// Lists one page of products.
    pub async fn list_products(&self, query: ProductQuery) -> Result<ProductPage> {
        self.read(move |s| catalog::list(s, &query)).await
    }

    /// Adds units of a product to a cart.
    pub async fn add_cart_item(
        &self,
        user: String,
        product: ProductId,
        quantity: i64,
    ) -> Result<Written<CartView>> {
        self.write(cart::add_item_op(user, product, quantity)?)
            .await
    }

    /// Sets a cart line's quantity.
    pub async fn set_cart_item_quantity(
        &self,
        user: String,
        product: ProductId,
        quantity: i64,
    ) -> Result<Written<CartView>> {
        self.write(cart::set_quantity_op(user, product, quantity)?)
            .await
    }

    /// Removes a cart line.
    pub async fn remove_cart_item(
        &self,
        user: String,
        product: ProductId,
    ) -> Result<Written<CartView>> {
        self.write(cart::remove_item_op(user, product)?).await
    }

    /// Reads a priced cart.
    pub async fn get_cart(&self, user: String) -> Result<CartView> {
        self.read(move |s| cart::get(s, &user)).await
    }

    /// Empties a cart.
    pub async fn clear_cart(&self, user: String) -> Result<Written<CartView>> {
        self.write(cart::clear_op(user)?).await
    }

    /// Checks out a cart, idempotently. A replay is returned only once the original order
    /// is durable (its original call may still be waiting for the same flush).
    pub async fn place_order(
        &self,
        user: String,
        idempotency_key: String,
    ) -> Result<Written<Placed>> {
        // A replay found the order in the trees, and nothing is applied there before its
        // WAL record is durable: the original is durable too.
        self.write(order::place_op(user, idempotency_key)?).await
    }

    /// Reads an order.
    pub async fn get_order(&self, id: OrderId) -> Result<Order> {
        self.read(move |s| order::get(s, id)).await
    }

    /// Lists one page of a user's orders, newest first.
    pub async fn list_orders(
        &self,
        user: String,
        page_size: u32,
        page_token: String,
    ) -> Result<OrderPage> {
        self.read(move |s| order::list_for_user(s, &user, page_size, &page_token))
            .await
    }

    /// Lists one page of every customer's orders, newest first, optionally one status.
    pub async fn list_all_orders(
        &self,
        status: Option<OrderStatus>,
        page_size: u32,
        page_token: String,
    ) -> Result<OrderPage> {
        self.read(move |s| order::list_all(s, status, page_size, &page_token))
            .await
    }

    /// Creates an account: the password is hashed (bounded, off the async workers) before
    /// the write is queued, so the writer never waits on Argon2.
    pub async fn sign_up(&self, username: String, password: Password) -> Result<Written<Account>> {
        crate::validate::username(&username)?;
        let hash = self.hasher.hash(password).await?;
        self.write(account::sign_up_op(username, hash)?).await
    }

    /// The account `username` names if `password` is its password. A wrong password and an
    /// unknown (or malformed) username are the same `Unauthenticated`, after the same work.
    /// Attempts per username are rate-limited first (`throttle`), before any work.
    pub async fn sign_in(&self, username: String, password: Password) -> Result<Account> {
        self.sign_ins.attempt(&username)?;
        let found = self
            .read(move |s| account::find_by_username(s, &username))
            .await?;
        let phc = found.as_ref().map(|a| a.password_hash.clone());
        match (self.hasher.verify(phc, password).await?, found) {
            (true, Some(account)) => Ok(account),
            _ => Err(ShopError::Unauthenticated(
                "wrong username or password".into(),
            )),
        }
    }

    /// Reads an account.
    pub async fn get_account(&self, id: UserId) -> Result<Account> {
        self.read(move |s| account::get(s, id)).await
    }

    /// Moves an order through the status machine.
    pub async fn update_order_status(
        &self,
        id: OrderId,
        to: OrderStatus,
    ) -> Result<Written<Order>> {
        self.write(order::set_status_op(id, to)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Group-commit throughput of product creation at concurrency 16 (run with
    /// `--ignored --nocapture`); prints writes/s and writes per fsync.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark"]
    async fn bench_create_product_concurrency_16() {
        concord::telemetry::init_for_tests();
        for linger_us in [0u64] {
            let dir = tempfile::tempdir().unwrap();
            let mut config = StoreConfig::new(dir.path().join("db"));
            config.linger = Duration::from_micros(linger_us);
            let shop = Shop::open(&config).unwrap();
            let cpu_before = concord_testkit::process_cpu_seconds();
            let deadline = Instant::now() + Duration::from_secs(3);
            let tasks: Vec<_> = (0..16)
                .map(|t| {
                    let shop = shop.clone();
                    tokio::spawn(async move {
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            let new = NewProduct {
                                name: format!("bench {t}-{n}"),
                                price_minor: 100,
                                stock: 10,
                                ..Default::default()
                            };
                            shop.create_product(new).await.unwrap();
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            let stats = shop.store().commit_stats();
            tracing::warn!(
                linger_us,
                writes_per_s = (total as f64 / 3.0).round(),
                cpu_us_per_write = ((concord_testkit::process_cpu_seconds() - cpu_before) * 1e6
                    / total.max(1) as f64)
                    .round(),
                flushes = stats.flushes,
                writes_per_flush = stats.writes as f64 / stats.flushes.max(1) as f64,
                us_per_flush = (stats.flush_micros as f64 / stats.flushes.max(1) as f64).round(),
                "create_product, in-process, concurrency 16"
            );
        }
    }
}
