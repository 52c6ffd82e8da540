//! What the shop's WAL costs per group commit on this machine: one batch of `b`
//! CreateProduct-sized entries (~260 bytes each) framed, appended to a segment file and
//! made durable with ONE `fdatasync` (`SegmentLog::append`), alone, without sled or gRPC.
//! Compare with `sled_floor` (sled's transaction + flush for the same batch): this is the
//! durability floor of the write path since the WAL became the log of record.
//! The log lives under `CARGO_TARGET_TMPDIR`, on the build's disk, so the syncs hit a real
//! device (a tmpfs would make them free).

use std::time::Duration;

use concord_shop::SegmentLog;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// An entry shaped like a CreateProduct: a product record and the id counter.
fn entry(lsn: u64) -> concord_shop::WalEntry {
    use concord_shop::{Mutation, TreeName, WalEntry};
    WalEntry {
        lsn,
        term: 1,
        committed_at_ms: 1_700_000_000_000,
        mutations: vec![
            Mutation {
                tree: TreeName::Products,
                key: lsn.to_be_bytes().to_vec(),
                value: Some(vec![b'p'; 180]),
            },
            Mutation {
                tree: TreeName::Counters,
                key: b"last_product_id".to_vec(),
                value: Some(lsn.to_be_bytes().to_vec()),
            },
        ],
    }
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append_sync");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for b in [1u64, 5, 16] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let (mut log, _) =
            SegmentLog::open(dir.path(), concord_shop::DEFAULT_SEGMENT_BYTES).expect("open");
        group.bench_with_input(BenchmarkId::from_parameter(b), &b, |bench, &b| {
            bench.iter(|| {
                let next = log.last_lsn() + 1;
                let batch: Vec<_> = (next..next + b).map(entry).collect();
                log.append(&batch).expect("append");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
