//! The shop's stored encodings, measured: a product and an order record as JSON (the old
//! format) and as protobuf (the current one), and a PlaceOrder-shaped WAL entry in the old
//! hand-written layout and as `pb::WalEntry`, each encoded then decoded. The byte sizes
//! are printed once. Run: `cargo bench -p concord-shop --bench record_codec`.
//!
//! Instructions per operation (no hardware counters in the VM): run the bench binary
//! under callgrind as `<binary> --count <case> <n>` for n = 0 and n = 10000 and divide the
//! difference of the totals by 10000; cases are the benchmark names below.

use std::hint::black_box;

use concord_shop::codec::{self, legacy, Record};
use concord_shop::{
    Mutation, Order, OrderId, OrderLine, OrderStatus, Product, ProductId, TreeName, WalEntry,
};
use criterion::{criterion_group, Criterion};

/// A catalogue product with a short description.
fn product() -> Product {
    Product {
        id: ProductId(1_234),
        name: "Green tea, Sencha".into(),
        description: "Japanese green tea, 100 g loose leaves".into(),
        price_minor: 1_250,
        currency: "EUR".into(),
        stock: 480,
        created_at_ms: 1_796_443_600_176,
        updated_at_ms: 1_796_443_600_202,
    }
}

/// An order of two lines.
fn order() -> Order {
    let line = |id: u64, name: &str, quantity: u32, unit: i64| OrderLine {
        product_id: ProductId(id),
        name: name.into(),
        quantity,
        unit_price_minor: unit,
        line_total_minor: i64::from(quantity) * unit,
    };
    Order {
        id: OrderId(56_789),
        user_id: "u-000000000042".into(),
        lines: vec![
            line(1_234, "Green tea, Sencha", 3, 1_250),
            line(77, "Teapot", 1, 3_900),
        ],
        total_minor: 7_650,
        currency: "EUR".into(),
        status: OrderStatus::Pending,
        idempotency_key: "checkout-5f3c2a1e-0000-4000-8000-00000000abcd".into(),
        created_at_ms: 1_796_443_600_202,
        updated_at_ms: 1_796_443_600_202,
        placed_lsn: 123_456,
        placed_term: 1,
    }
}

/// The WAL entry of a PlaceOrder (two products restocked, the order, its indexes, the id
/// counter, the cart deleted), with records encoded by `record`.
fn place_order_entry(record: impl Fn(&dyn Fn() -> Vec<u8>, bool) -> Vec<u8>) -> WalEntry {
    let put = |tree, key: Vec<u8>, value| Mutation {
        tree,
        key,
        value: Some(value),
    };
    let user = b"u-000000000042".to_vec();
    let mut user_order = user.clone();
    user_order.push(0);
    user_order.extend_from_slice(&56_789u64.to_be_bytes());
    let mut idempotency = user.clone();
    idempotency.push(0);
    idempotency.extend_from_slice(b"checkout-5f3c2a1e-0000-4000-8000-00000000abcd");
    WalEntry {
        lsn: 123_456,
        term: 1,
        committed_at_ms: 1_796_443_600_202,
        mutations: vec![
            put(
                TreeName::Counters,
                b"last_order_id".to_vec(),
                56_789u64.to_be_bytes().to_vec(),
            ),
            put(
                TreeName::Products,
                1_234u64.to_be_bytes().to_vec(),
                record(&|| product().encode(), true),
            ),
            put(
                TreeName::Products,
                77u64.to_be_bytes().to_vec(),
                record(&|| product().encode(), true),
            ),
            put(
                TreeName::Orders,
                56_789u64.to_be_bytes().to_vec(),
                record(&|| order().encode(), false),
            ),
            put(TreeName::UserOrders, user_order, Vec::new()),
            put(
                TreeName::Idempotency,
                idempotency,
                56_789u64.to_be_bytes().to_vec(),
            ),
            Mutation {
                tree: TreeName::Carts,
                key: user,
                value: None,
            },
        ],
    }
}

/// The entry as the new shop logs it: protobuf records.
fn entry_protobuf() -> WalEntry {
    place_order_entry(|encode, _| encode())
}

/// The entry as the old shop logged it: JSON records.
fn entry_json() -> WalEntry {
    place_order_entry(|_, is_product| {
        if is_product {
            serde_json::to_vec(&product()).expect("json")
        } else {
            serde_json::to_vec(&order()).expect("json")
        }
    })
}

/// One measured operation: encode then decode.
type Case = (&'static str, Box<dyn Fn()>);

fn cases() -> Vec<Case> {
    let (p, o) = (product(), order());
    let (p2, o2) = (p.clone(), o.clone());
    let pb_entry = entry_protobuf();
    // The old layout decoded by the old decoder: the values are left as they are
    // (protobuf ones here, so the shop's upgrade of JSON values does not count).
    let v1_entry = entry_protobuf();
    vec![
        (
            "product/json",
            Box::new(move || {
                let bytes = serde_json::to_vec(black_box(&p)).expect("json");
                black_box(serde_json::from_slice::<Product>(&bytes).expect("json"));
            }),
        ),
        (
            "product/protobuf",
            Box::new(move || {
                let bytes = black_box(&p2).encode();
                black_box(Product::decode(&bytes).expect("decode"));
            }),
        ),
        (
            "order/json",
            Box::new(move || {
                let bytes = serde_json::to_vec(black_box(&o)).expect("json");
                black_box(serde_json::from_slice::<Order>(&bytes).expect("json"));
            }),
        ),
        (
            "order/protobuf",
            Box::new(move || {
                let bytes = black_box(&o2).encode();
                black_box(Order::decode(&bytes).expect("decode"));
            }),
        ),
        (
            "wal_entry/v1_layout",
            Box::new(move || {
                let bytes = legacy::encode_wal_v1(black_box(&v1_entry));
                black_box(legacy::decode_wal_v1(&bytes).expect("decode"));
            }),
        ),
        (
            "wal_entry/protobuf",
            Box::new(move || {
                let bytes = codec::encode_entry(black_box(&pb_entry));
                black_box(codec::decode_entry(&bytes).expect("decode"));
            }),
        ),
    ]
}

/// JSON size of a record.
fn json_len<T: serde::Serialize>(record: &T) -> usize {
    serde_json::to_vec(record).expect("json").len()
}

fn print_sizes() {
    println!(
        "sizes (bytes): product json {} protobuf {}; order json {} protobuf {}; \
         PlaceOrder WAL record payload before (v1 layout, JSON records) {} after \
         (pb::WalEntry, protobuf records) {}",
        json_len(&product()),
        product().encode().len(),
        json_len(&order()),
        order().encode().len(),
        legacy::encode_wal_v1(&entry_json()).len(),
        codec::encode_entry(&entry_protobuf()).len(),
    );
}

fn bench_codec(c: &mut Criterion) {
    print_sizes();
    let mut group = c.benchmark_group("encode_decode");
    for (name, run) in cases() {
        group.bench_function(name, |b| b.iter(&run));
    }
    group.finish();
}

criterion_group!(benches, bench_codec);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--count") {
        let (name, n) = (&args[i + 1], args[i + 2].parse::<u64>().expect("count"));
        let cases = cases();
        let (_, run) = cases.iter().find(|(c, _)| c == name).expect("known case");
        for _ in 0..n {
            run();
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
