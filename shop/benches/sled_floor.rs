//! What sled 0.34 itself costs per writer batch on this machine, below any Concord code:
//! the floor under the shop's durable-write throughput (docs/BENCHMARKS.md, "sled's own
//! floor").
//!
//! Each iteration writes one batch of `b` records shaped like `CreateProduct` — a counter
//! read and bumped, a ~180-byte product record, a ~260-byte WAL entry and the store's
//! last-LSN marker — into four trees, and makes it durable:
//! - `tx_flush/b`: one multi-tree sled transaction, then `Db::flush`. This is what the
//!   shop does per batch (../shared/DESIGN.md puts the WAL entry in the data's transaction).
//! - `tx/b`: the same transaction without the flush, to split the two costs.
//! - `inserts_flush/b`: the same keys with plain `insert`s, then `Db::flush` (no
//!   transaction: what a redo-log design would pay).
//!
//! A writer that must commit and flush each batch before the next can start (sled's
//! flush holds the read side of its global lock, a transaction needs the write side)
//! cannot exceed `b / time(tx_flush/b)` writes per second, whatever sits above it.
//! The database lives under `CARGO_TARGET_TMPDIR`, on the build's disk, so the flushes
//! hit a real device (a tmpfs would make them free).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

const PRODUCT: [u8; 180] = [b'p'; 180];
const WAL_ENTRY: [u8; 260] = [b'w'; 260];

struct Db {
    _dir: tempfile::TempDir,
    db: sled::Db,
    counters: sled::Tree,
    products: sled::Tree,
    wal: sled::Tree,
    meta: sled::Tree,
    lsn: u64,
}

impl Db {
    fn open() -> Self {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let db = sled::Config::new()
            .path(dir.path())
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(None)
            .open()
            .expect("open sled");
        let tree = |name: &str| db.open_tree(name).expect("open tree");
        Self {
            counters: tree("counters"),
            products: tree("products"),
            wal: tree("wal"),
            meta: tree("meta"),
            db,
            _dir: dir,
            lsn: 0,
        }
    }

    /// One batch of `b` creates in one transaction across the four trees.
    fn transact(&mut self, b: u64) {
        let first = self.lsn + 1;
        (&self.counters, &self.products, &self.wal, &self.meta)
            .transaction(|(counters, products, wal, meta)| {
                for lsn in first..first + b {
                    let id = counters.get(b"product")?.map_or(0, |v| {
                        u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))
                    }) + 1;
                    counters.insert(b"product", &id.to_be_bytes())?;
                    products.insert(&id.to_be_bytes(), &PRODUCT[..])?;
                    wal.insert(&lsn.to_be_bytes(), &WAL_ENTRY[..])?;
                    meta.insert(b"last_lsn", &lsn.to_be_bytes())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .expect("transaction");
        self.lsn += b;
    }

    /// The same keys and values as [`transact`](Self::transact), as plain inserts.
    fn insert(&mut self, b: u64) {
        for _ in 0..b {
            self.lsn += 1;
            let lsn = self.lsn.to_be_bytes();
            self.wal.insert(lsn, &WAL_ENTRY[..]).expect("insert");
            self.products.insert(lsn, &PRODUCT[..]).expect("insert");
            self.counters.insert(b"product", &lsn).expect("insert");
        }
        self.meta
            .insert(b"last_lsn", &self.lsn.to_be_bytes())
            .expect("insert");
    }

    fn flush(&self) {
        self.db.flush().expect("flush");
    }
}

fn bench_floor(c: &mut Criterion) {
    let mut group = c.benchmark_group("sled_floor");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for b in [1u64, 5, 16] {
        let mut db = Db::open();
        group.bench_with_input(BenchmarkId::new("tx_flush", b), &b, |bench, &b| {
            bench.iter(|| {
                db.transact(b);
                db.flush();
            })
        });
        group.bench_with_input(BenchmarkId::new("tx", b), &b, |bench, &b| {
            bench.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    db.transact(b);
                    spent += started.elapsed();
                    db.flush();
                }
                spent
            })
        });
        group.bench_with_input(BenchmarkId::new("inserts_flush", b), &b, |bench, &b| {
            bench.iter(|| {
                db.insert(b);
                db.flush();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_floor);
criterion_main!(benches);
