//! The async face of the shop domain: what the gRPC service (and the bench) call.
//!
//! Reads run on tokio's blocking pool (a sled call may wait on sled's global lock while a
//! flush runs, so it must not sit on an async worker). Writes go through ONE writer
//! thread fed by a bounded queue ([`WRITE_QUEUE_CAPACITY`]; a full queue makes the caller
//! wait, it never drops work). The writer takes everything queued (up to
//! [`MAX_WRITE_BATCH`]), runs each write as its own sled transaction, flushes once, and
//! only then replies to every caller of the batch — group commit without a hand-off:
//! writes that arrive during the fsync form the next batch. Compared with a herd of
//! blocking-pool threads fighting over sled's global transaction lock plus a separate
//! flusher, this removed most of the futex/scheduler churn that dominated the profile.
//! If the flush fails, every write of the batch fails with `Unavailable` (committed in
//! memory, not acknowledged).
//!
//! A method returning `Ok(Written { lsn, .. })` means the write is on disk; `lsn: None`
//! means it changed nothing. Errors never leave partial writes behind (one transaction
//! per call). The writer thread stops when the last `Shop` handle is dropped.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::cart::{self, CartView};
use crate::catalog::{self, NewProduct, Product, ProductPage, ProductPatch, ProductQuery};
use crate::error::{Result, ShopError};
use crate::keys::{OrderId, ProductId};
use crate::order::{self, Order, OrderPage, OrderStatus, Placed};
use crate::store::{Committed, Store, StoreConfig, Written};

/// Writes queued for the writer thread before callers wait.
pub const WRITE_QUEUE_CAPACITY: usize = 1024;
/// Most writes the writer commits before it flushes and replies.
pub const MAX_WRITE_BATCH: usize = 256;

/// Reports a write's outcome once its batch's flush is known.
type Completion = Box<dyn FnOnce(Result<()>) + Send>;
/// Runs one write; returns its LSN (if it changed anything) and its completion.
type WriteJob = Box<dyn FnOnce(&Store) -> (Option<crate::wal::Lsn>, Completion) + Send>;

/// Cheap-to-clone handle on the shop's store.
#[derive(Clone)]
pub struct Shop {
    store: Arc<Store>,
    writer: Arc<Writer>,
}

/// The writer thread; dropping the last handle closes the queue and joins the thread, so
/// the store is released deterministically (a restart can reopen the directory at once).
struct Writer {
    write_tx: Option<mpsc::Sender<WriteJob>>,
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
fn run_writer(store: &Store, write_rx: &mut mpsc::Receiver<WriteJob>) {
    crate::store::set_thread_flushes_own_batches();
    let mut completions = Vec::with_capacity(MAX_WRITE_BATCH);
    while let Some(first) = write_rx.blocking_recv() {
        let mut max_lsn = None;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            // A panicking write (a bug) must not take the writer down with it: its caller
            // sees its reply channel dropped (Unavailable) and the writer carries on.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(store))) {
                Ok((lsn, completion)) => {
                    max_lsn = max_lsn.max(lsn);
                    completions.push(completion);
                }
                Err(_) => tracing::error!("a shop write panicked; its caller gets an error"),
            }
            if completions.len() < MAX_WRITE_BATCH {
                next = write_rx.try_recv().ok();
            }
        }
        let flushed = match max_lsn {
            Some(lsn) => store.flush_through(lsn, completions.len()),
            None => Ok(()),
        };
        if let Err(e) = &flushed {
            tracing::error!(error = %e, batch = completions.len(), "batch flush failed");
        }
        for completion in completions.drain(..) {
            completion(flushed.clone());
        }
    }
}

impl Shop {
    /// Opens the store at `config.path`.
    pub fn open(config: &StoreConfig) -> Result<Self> {
        Self::new(Arc::new(Store::open(config)?))
    }

    /// Wraps an already open store and starts its writer thread.
    pub fn new(store: Arc<Store>) -> Result<Self> {
        let (write_tx, mut write_rx) = mpsc::channel::<WriteJob>(WRITE_QUEUE_CAPACITY);
        let writer_store = Arc::clone(&store);
        let thread = std::thread::Builder::new()
            .name("shop-writer".into())
            .spawn(move || run_writer(&writer_store, &mut write_rx))
            .map_err(|e| ShopError::internal(format!("cannot start writer thread: {e}")))?;
        let writer = Writer {
            write_tx: Some(write_tx),
            thread: Some(thread),
        };
        Ok(Self {
            store,
            writer: Arc::new(writer),
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
        tokio::task::spawn_blocking(move || op(&store)).await?
    }

    async fn write<T, F>(&self, op: F) -> Result<Written<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<Committed<T>> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |store| {
            let result = op(store);
            let lsn = result.as_ref().ok().and_then(|c| c.lsn);
            let completion: Completion = Box::new(move |flushed| {
                // A dropped receiver means the caller went away: the write stands,
                // unacknowledged.
                let outcome = match result {
                    Err(e) => Err(e), // nothing was written: the operation's own error
                    Ok(committed) => flushed.map(|()| committed),
                };
                let _ = done_tx.send(outcome);
            });
            (lsn, completion)
        });
        let stopped = || ShopError::Unavailable("the shop writer has stopped".into());
        let write_tx = self.writer.write_tx.as_ref().ok_or_else(stopped)?;
        write_tx.send(job).await.map_err(|_| stopped())?;
        let committed = done_rx.await.map_err(|_| stopped())??;
        let written = committed.durable().await?;
        tracing::debug!(lsn = ?written.lsn, "write durable");
        Ok(written)
    }

    /// Creates a product.
    pub async fn create_product(&self, new: NewProduct) -> Result<Written<Product>> {
        self.write(move |s| catalog::create(s, new)).await
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
        self.write(move |s| catalog::update(s, id, patch)).await
    }

    /// Deletes a product.
    pub async fn delete_product(&self, id: ProductId) -> Result<Written<()>> {
        self.write(move |s| catalog::delete(s, id)).await
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
        self.write(move |s| cart::add_item(s, &user, product, quantity))
            .await
    }

    /// Sets a cart line's quantity.
    pub async fn set_cart_item_quantity(
        &self,
        user: String,
        product: ProductId,
        quantity: i64,
    ) -> Result<Written<CartView>> {
        self.write(move |s| cart::set_quantity(s, &user, product, quantity))
            .await
    }

    /// Removes a cart line.
    pub async fn remove_cart_item(
        &self,
        user: String,
        product: ProductId,
    ) -> Result<Written<CartView>> {
        self.write(move |s| cart::remove_item(s, &user, product))
            .await
    }

    /// Reads a priced cart.
    pub async fn get_cart(&self, user: String) -> Result<CartView> {
        self.read(move |s| cart::get(s, &user)).await
    }

    /// Empties a cart.
    pub async fn clear_cart(&self, user: String) -> Result<Written<CartView>> {
        self.write(move |s| cart::clear(s, &user)).await
    }

    /// Checks out a cart, idempotently. A replay is returned only once the original order
    /// is durable (its original call may still be waiting for the same flush).
    pub async fn place_order(
        &self,
        user: String,
        idempotency_key: String,
    ) -> Result<Written<Placed>> {
        let written = self
            .write(move |s| order::place(s, &user, &idempotency_key))
            .await?;
        if written.value.replayed {
            self.store
                .durable_ticket(written.value.order.placed_lsn)
                .wait()
                .await?;
        }
        Ok(written)
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

    /// Moves an order through the status machine.
    pub async fn update_order_status(
        &self,
        id: OrderId,
        to: OrderStatus,
    ) -> Result<Written<Order>> {
        self.write(move |s| order::set_status(s, id, to)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// User + system CPU seconds of this process.
    fn cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
            f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
        });
        ticks / 100.0
    }

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
            let cpu_before = cpu_seconds();
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
                cpu_us_per_write =
                    ((cpu_seconds() - cpu_before) * 1e6 / total.max(1) as f64).round(),
                flushes = stats.flushes,
                writes_per_flush = stats.writes as f64 / stats.flushes.max(1) as f64,
                us_per_flush = (stats.flush_micros as f64 / stats.flushes.max(1) as f64).round(),
                "create_product, in-process, concurrency 16"
            );
        }
    }
}
