//! The ledger's stored-record encoding, measured: one event encoded and decoded as JSON
//! (the old format) and as protobuf (the current one), and, for scale, one flushed
//! `stake` call on a ledger in a tempdir, which every ledger write pays. The sizes of one
//! event in each encoding are printed once. Run: `cargo bench -p concord-aggregator`.

use std::hint::black_box;

use concord_aggregator::ledger::{event_hash, record, Event, EventKind, Ledger, GENESIS_HASH};
use concord_aggregator::policy::ScoringParams;
use criterion::{criterion_group, criterion_main, Criterion};

/// A typical scoring event: a slash with a request id.
fn sample_event() -> Event {
    let mut e = Event {
        seq: 123_456,
        kind: EventKind::Slash,
        node_id: "node-3".into(),
        amount: 20,
        stake_after: 980,
        trust_after_ppb: 450_000_000,
        request_id: Some("agg-5f3c2a1e-0000-4000-8000-00000000abcd".into()),
        at_ms: 1_764_892_800_000,
        prev_hash: GENESIS_HASH.into(),
        hash: String::new(),
    };
    e.hash = event_hash(&e);
    e
}

fn bench_codec(c: &mut Criterion) {
    let e = sample_event();
    let json = serde_json::to_vec(&e).expect("json");
    let proto = record::encode_event(&e).expect("protobuf");
    eprintln!(
        "one event: JSON {} bytes, protobuf {} bytes",
        json.len(),
        proto.len()
    );
    c.bench_function("event/json encode+decode", |b| {
        b.iter(|| {
            let bytes = serde_json::to_vec(black_box(&e)).expect("json");
            serde_json::from_slice::<Event>(&bytes).expect("json")
        })
    });
    c.bench_function("event/protobuf encode+decode", |b| {
        b.iter(|| {
            let bytes = record::encode_event(black_box(&e)).expect("protobuf");
            record::decode_event(&bytes).expect("protobuf")
        })
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::open(dir.path().join("ledger"), ScoringParams::default()).expect("open");
    c.bench_function("ledger/stake (one flushed transaction)", |b| {
        b.iter(|| ledger.stake("node-1", 1).expect("stake"))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_codec
}
criterion_main!(benches);
