//! The async face of the shop domain: what the gRPC service (and the bench) call.
//!
//! Point reads (a product, a cart, an order, an account) run on the caller's worker: a
//! sled point read is a cache lookup of a few µs, and the shop runs no sled transaction
//! or batch that would make it wait on sled's lock (a cache miss still reads the disk).
//! Scans (listings) run on tokio's blocking pool.
//!
//! **Writes: group commit by the submitting tasks themselves** (a leader/follower queue,
//! like LevelDB's writer queue or PostgreSQL's WAL flush). A write is validated on the
//! caller's task (the domain's `*_op` functions) and put in the shared queue. Then the
//! caller waits for the commit lock or its reply, whichever comes first:
//! - whoever gets the lock while its own write is still queued becomes the **leader**: it
//!   takes everything queued (up to [`MAX_WRITE_BATCH`]) and runs it as ONE batch of the
//!   store's write path ([`Store::transact_batch`]: each write keeps its own LSN and WAL
//!   entry and fails alone; the batch is appended to the WAL with one `fdatasync`, then
//!   applied to sled), replies to every write of the batch, and releases the lock;
//! - the others are **followers**: a leader commits their write and replies; the lock
//!   passes (FIFO) to the next waiter whose write is still queued.
//!
//! Writes that arrive during a sync form the next batch. The leader commits the batch on
//! its own worker thread, whatever its size: no hand-off to another thread and back,
//! which is most of what a write costs beyond the `fdatasync` at one client, and the
//! thread swap of [`tokio::task::block_in_place`] once per batch at sixteen (measured in
//! docs/BENCHMARKS.md, "Leader/follower commit" and "The primary's ack path"). The
//! runtime's other worker keeps serving meanwhile: it steals the blocked worker's queued
//! tasks (the leader wakes nobody before its commit, so nothing it woke sits in the
//! blocked worker's unstealable LIFO slot).
//!
//! If the WAL write fails, every write of the batch fails with `Unavailable` (nothing
//! applied, nothing acknowledged) and the store refuses writes until restarted. A write
//! whose caller went away while it was queued still commits with the next batch,
//! unacknowledged (as a write whose reply was lost).
//!
//! A method returning `Ok(Written { lsn, .. })` means the write is on disk; `lsn: None`
//! means it changed nothing. Errors never leave partial writes behind.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

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

/// Most writes a leader commits in one batch before it flushes and replies.
pub const MAX_WRITE_BATCH: usize = 256;

/// A write waiting in the queue: its body, and how to answer its caller.
trait QueuedWrite: Send {
    /// Runs the write inside the batch.
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
    commits: Arc<Committer>,
    /// Password hashing, bounded (see `password`).
    hasher: Hasher,
    sign_ins: Arc<SignInThrottle>,
}

/// The write queue and the commit lock (module docs).
struct Committer {
    /// Writes validated and waiting for a leader, in arrival order.
    queue: Mutex<Vec<Box<dyn QueuedWrite>>>,
    /// Held by the leader while it commits a batch; FIFO, so every queued writer gets its
    /// turn.
    lead: tokio::sync::Mutex<()>,
    /// How long a leader waits after taking the lock before it takes the batch.
    linger: Duration,
}

impl Committer {
    /// Takes up to [`MAX_WRITE_BATCH`] queued writes (the leader's batch).
    fn take_batch(&self) -> Vec<Box<dyn QueuedWrite>> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.len() <= MAX_WRITE_BATCH {
            std::mem::take(&mut *queue)
        } else {
            queue.drain(..MAX_WRITE_BATCH).collect()
        }
    }

    /// The leader's turn (caller holds `lead`): commits what is queued and answers every
    /// write of it, on its own thread (module docs); a linger (a sleep first) hands the
    /// worker's other tasks to another thread first.
    fn lead(&self, store: &Store) {
        if !self.linger.is_zero() {
            return run_blocking(false, || {
                std::thread::sleep(self.linger);
                self.commit(store, self.take_batch());
            });
        }
        self.commit(store, self.take_batch());
    }

    /// One batch of the write path: commits `batch` and answers every write of it.
    /// Blocking.
    fn commit(&self, store: &Store, batch: Vec<Box<dyn QueuedWrite>>) {
        if batch.is_empty() {
            return;
        }
        let outcomes = store.transact_batch(batch.len(), |i, tx| {
            // A panicking write (a bug) must not take the leader or its batch down: it is
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
        for (write, outcome) in batch.into_iter().zip(outcomes) {
            write.finish(outcome, term);
        }
    }
}

/// Runs a commit (blocking: a WAL append + `fdatasync`) from async code.
///
/// `alone`: nothing else waits on this work, i.e. one client at a time. Then it runs right
/// here on the worker, blocking it for one sync: what the runtime would otherwise do
/// meanwhile is nothing, and handing the worker's tasks to another thread
/// ([`tokio::task::block_in_place`]) costs about four futex calls and two thread wake-ups
/// per write (docs/BENCHMARKS.md, "Leader/follower commit"). Otherwise the worker's other
/// tasks move to another thread first. A current-thread runtime (tests) has nobody to hand
/// them to and simply runs it. The shop's commit leader does not use it (it always
/// commits inline, module docs); the replica's receiving task and a lingering leader do.
pub(crate) fn run_blocking<R>(alone: bool, work: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread && !alone {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

impl Shop {
    /// Opens the store at `config.path`.
    pub fn open(config: &StoreConfig) -> Result<Self> {
        Self::with_linger(Arc::new(Store::open(config)?), config.linger)
    }

    /// Wraps an already open store.
    pub fn new(store: Arc<Store>) -> Result<Self> {
        Self::with_linger(store, crate::store::DEFAULT_LINGER)
    }

    /// [`new`](Self::new) with a group-commit linger: a leader waits this long after
    /// taking the commit lock before it takes the batch.
    pub fn with_linger(store: Arc<Store>, linger: Duration) -> Result<Self> {
        Ok(Self {
            store,
            commits: Arc::new(Committer {
                queue: Mutex::new(Vec::with_capacity(MAX_WRITE_BATCH)),
                lead: tokio::sync::Mutex::new(()),
                linger,
            }),
            hasher: Hasher::default(),
            sign_ins: Arc::default(),
        })
    }

    /// The underlying store (replication uses its WAL API).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A point read (one key or one prefix of a few keys), right here on the worker: sled
    /// answers from its cache in microseconds, and a hop to the blocking pool cost about
    /// four context switches and 50 µs of CPU per read (docs/BENCHMARKS.md, "The gRPC
    /// floor"). The read view waits at most for one write's apply, which is in memory.
    fn read<T>(&self, op: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        let _view = self.store.read_view();
        op(&self.store)
    }

    /// A scan (a page of a listing) on the blocking pool: it may touch many keys.
    async fn scan<T, F>(&self, op: F) -> Result<T>
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

    /// Queues a validated write and waits until it is durable (or failed), committing it
    /// (and whatever else is queued) itself when it gets the commit lock first (module
    /// docs).
    async fn write<T: Send + 'static>(&self, op: impl WriteOp<T>) -> Result<Written<T>> {
        let (reply, mut done_rx) = oneshot::channel();
        let queued: Box<dyn QueuedWrite> = Box::new(Queued {
            op,
            value: RefCell::new(None),
            reply,
        });
        self.commits
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(queued);
        let lost = || ShopError::internal("a queued write was dropped unanswered");
        let written = loop {
            tokio::select! {
                biased;
                done = &mut done_rx => break done.map_err(|_| lost())?,
                _lead = self.commits.lead.lock() => {
                    // Leader: a write not answered yet is still queued (every earlier
                    // leader answered its whole batch before releasing the lock).
                    match done_rx.try_recv() {
                        Ok(done) => break done,
                        Err(oneshot::error::TryRecvError::Closed) => return Err(lost()),
                        Err(oneshot::error::TryRecvError::Empty) => {
                            self.commits.lead(&self.store);
                        }
                    }
                }
            }
        }?;
        tracing::debug!(lsn = ?written.lsn, "write durable");
        Ok(written)
    }

    /// Creates a product.
    pub async fn create_product(&self, new: NewProduct) -> Result<Written<Product>> {
        self.write(catalog::create_op(new)?).await
    }

    /// Reads a product.
    pub async fn get_product(&self, id: ProductId) -> Result<Product> {
        self.read(move |s| catalog::get(s, id))
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
        self.scan(move |s| catalog::list(s, &query)).await
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
        self.read(move |s| cart::get(s, &user))
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
        self.read(move |s| order::get(s, id))
    }

    /// Lists one page of a user's orders, newest first.
    pub async fn list_orders(
        &self,
        user: String,
        page_size: u32,
        page_token: String,
    ) -> Result<OrderPage> {
        self.scan(move |s| order::list_for_user(s, &user, page_size, &page_token))
            .await
    }

    /// Lists one page of every customer's orders, newest first, optionally one status.
    pub async fn list_all_orders(
        &self,
        status: Option<OrderStatus>,
        page_size: u32,
        page_token: String,
    ) -> Result<OrderPage> {
        self.scan(move |s| order::list_all(s, status, page_size, &page_token))
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
        let found = self.read(move |s| account::find_by_username(s, &username))?;
        let phc = found.as_ref().map(|a| a.password_hash.clone());
        match (self.hasher.verify(phc, password).await?, found) {
            (true, Some(account)) => Ok(account),
            _ => Err(ShopError::Unauthenticated(
                "wrong username or password".into(),
            )),
        }
    }

    /// Ends every session of `user` (raises its session generation).
    pub async fn sign_out(&self, user: UserId) -> Result<Written<Account>> {
        self.write(account::sign_out_op(user)).await
    }

    /// Reads an account.
    pub async fn get_account(&self, id: UserId) -> Result<Account> {
        self.read(move |s| account::get(s, id))
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

    fn product(name: &str) -> NewProduct {
        NewProduct {
            name: name.into(),
            price_minor: 100,
            stock: 10,
            ..Default::default()
        }
    }

    fn temp_shop() -> (tempfile::TempDir, Shop) {
        let dir = tempfile::tempdir().unwrap();
        let shop = Shop::open(&StoreConfig::new(dir.path().join("db"))).unwrap();
        (dir, shop)
    }

    fn queued(shop: &Shop) -> usize {
        shop.commits.queue.lock().unwrap().len()
    }

    /// Polls `cond` every millisecond for at most 10 s.
    async fn eventually(cond: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("condition not reached within 10 s");
    }

    /// Writes queued while a commit runs are committed together by ONE of them (the next
    /// leader) with one sync, each under its own gap-free LSN.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_commit_as_one_batch_led_by_one_writer() {
        let (_dir, shop) = temp_shop();
        shop.create_product(product("first")).await.unwrap();
        let before = shop.store().commit_stats();
        // Stand in for a leader busy with its sync: every writer must queue.
        let busy = shop.commits.lead.lock().await;
        let writers: Vec<_> = (0..16)
            .map(|i| {
                let shop = shop.clone();
                tokio::spawn(async move { shop.create_product(product(&format!("p{i}"))).await })
            })
            .collect();
        eventually(|| queued(&shop) == 16).await;
        drop(busy);
        let mut lsns = Vec::new();
        for writer in writers {
            lsns.push(writer.await.unwrap().unwrap().lsn.unwrap());
        }
        lsns.sort_unstable();
        assert_eq!(lsns, (2..=17).collect::<Vec<_>>());
        let after = shop.store().commit_stats();
        assert_eq!(
            after.flushes - before.flushes,
            1,
            "one sync for the 16 queued writes"
        );
        assert_eq!(after.writes - before.writes, 16);
        assert_eq!(queued(&shop), 0);
    }

    /// A write whose caller went away while it was queued is not lost in the queue: it
    /// commits with the next batch (unacknowledged), as a write whose reply was lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_queued_write_commits_with_the_next_batch() {
        let (_dir, shop) = temp_shop();
        let busy = shop.commits.lead.lock().await;
        let abandoned = {
            let shop = shop.clone();
            tokio::spawn(async move { shop.create_product(product("abandoned")).await })
        };
        eventually(|| queued(&shop) == 1).await;
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        drop(busy);
        let next = shop.create_product(product("next")).await.unwrap();
        assert_eq!(
            next.lsn,
            Some(2),
            "the abandoned write committed first, at LSN 1"
        );
        let names: Vec<String> = shop
            .list_products(ProductQuery::default())
            .await
            .unwrap()
            .products
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert!(names.contains(&"abandoned".to_string()), "{names:?}");
    }

    /// On a current-thread runtime (no other worker to hand tasks to) a writer commits
    /// its own write inline, and writes, reads and errors behave as on the multi-thread one.
    #[tokio::test]
    async fn a_current_thread_runtime_commits_inline() {
        let (_dir, shop) = temp_shop();
        let written = shop.create_product(product("one")).await.unwrap();
        assert_eq!(written.lsn, Some(1));
        let read = shop.get_product(written.value.id).await.unwrap();
        assert_eq!(read.name, "one");
        assert!(shop.create_product(product("")).await.is_err());
        let again = shop.create_product(product("two")).await.unwrap();
        assert_eq!(again.lsn, Some(2), "a refused write consumes no LSN");
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
