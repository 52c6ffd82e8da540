//! A store written by the shop before its records were protobuf (the fixture
//! `fixtures/store-v1`, see its README) opens, is migrated, reads the same, logs new writes
//! in protobuf, and replicates to a replica of the new shop with identical data.

use std::path::Path;
use std::time::Duration;

use concord::pb::shop::v1 as pb;
use concord_shop::codec::{self, Record};
use concord_shop::{Account, Order, OrderStatus, Product, Store, StoreConfig, TreeName};
use concord_testkit::eventually;
use concord_testkit::shop::{get_order, get_product, start};

/// The fixture: sled files (checkpointed at LSN 8) and one WAL segment (LSNs 1..=14, the
/// last 6 never checkpointed), all JSON records and old-layout WAL records.
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-v1");
/// Bytes of the fixture's WAL records (the file ends where they do).
const FIXTURE_WAL_BYTES: usize = 4396;
const SEGMENT: &str = "wal/00000000000000000001.wal";

/// Copies the fixture into `to` (tests never write to the committed files).
fn copy_fixture(to: &Path) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for item in std::fs::read_dir(from).expect("read fixture") {
            let item = item.expect("fixture entry");
            let target = to.join(item.file_name());
            if item.file_type().expect("type").is_dir() {
                copy(&item.path(), &target);
            } else if item.file_name() != "README.md" {
                std::fs::copy(item.path(), &target).expect("copy");
            }
        }
    }
    copy(Path::new(FIXTURE), to);
}

/// Every value of `tree`, each checked to be protobuf (not the old JSON) and decoded.
fn records<R: Record>(store: &Store) -> Vec<R> {
    store
        .tree(R::TREE)
        .iter()
        .map(|item| {
            let (key, value) = item.expect("read");
            assert_ne!(value.first(), Some(&b'{'), "{:?} {key:?} is JSON", R::TREE);
            R::decode(&value).expect("decode")
        })
        .collect()
}

/// An old store opens with every record migrated to protobuf and the same contents, its
/// old WAL records read back with protobuf values (replaying them onto an empty store
/// gives byte-identical data), and a new write is logged as a protobuf WAL record.
#[test]
fn an_old_store_is_migrated_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    copy_fixture(&path);
    let store = Store::open(&StoreConfig::new(&path)).expect("open the old store");
    assert_eq!(store.last_lsn().expect("lsn"), 14);

    let products: Vec<Product> = records(&store);
    let summary: Vec<_> = products
        .iter()
        .map(|p| (p.id.0, p.name.as_str(), p.price_minor, p.stock))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "Green tea", 1250, 37),
            (2, "Teapot", 3900, 4),
            (3, "Kettle", 2999, 7)
        ]
    );
    assert_eq!(products[0].description, "Sencha, 100 g");
    let orders: Vec<Order> = records(&store);
    let summary: Vec<_> = orders
        .iter()
        .map(|o| (o.id.0, o.status, o.total_minor, o.lines.len(), o.placed_lsn))
        .collect();
    assert_eq!(
        summary,
        [
            (1, OrderStatus::Paid, 7650, 2, 6),
            (2, OrderStatus::Cancelled, 5998, 1, 13)
        ]
    );
    let accounts: Vec<Account> = records(&store);
    let names: Vec<_> = accounts.iter().map(|a| a.username.as_str()).collect();
    assert_eq!(names, ["alice", "Bob"]);
    assert!(accounts[0].password_hash.starts_with("$argon2id$"));
    let carts: Vec<concord_shop::StoredCart> = records(&store);
    let lines: Vec<_> = carts[0]
        .items
        .iter()
        .map(|i| (i.product_id.0, i.quantity))
        .collect();
    assert_eq!(lines, [(2, 2), (3, 1)]);

    // The old WAL records come back with protobuf values, and replay to the same bytes.
    let entries = store.wal_since(0, 100).expect("wal");
    assert_eq!(entries.len(), 14);
    for m in entries.iter().flat_map(|e| &e.mutations) {
        assert_ne!(
            m.value.as_ref().and_then(|v| v.first()),
            Some(&b'{'),
            "{m:?}"
        );
    }
    let replayed_dir = tempfile::tempdir().expect("tempdir");
    let replayed = Store::open(&StoreConfig::new(replayed_dir.path())).expect("open");
    replayed.apply_wal_entries(&entries).expect("replay");
    assert_eq!(
        replayed.digest().expect("digest"),
        store.digest().expect("digest")
    );

    // A new write is a protobuf record after the old ones, and the store reopens.
    store
        .transact(|tx| tx.put(TreeName::Counters, b"probe", vec![1]))
        .expect("write");
    drop(store);
    let segment = std::fs::read(path.join(SEGMENT)).expect("segment");
    assert_eq!(
        segment[FIXTURE_WAL_BYTES + 8],
        0x08,
        "pb::WalEntry, field 1"
    );
    let store = Store::open(&StoreConfig::new(&path)).expect("reopen");
    assert_eq!(store.last_lsn().expect("lsn"), 15);
    assert_eq!(records::<Product>(&store), products);
}

/// A store marked by a newer shop's record format refuses to open, naming the store and
/// what to do, and is left as it was.
#[test]
fn a_store_from_a_newer_shop_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    {
        let db = sled::open(&path).expect("sled");
        db.open_tree("meta")
            .expect("meta")
            .insert(codec::META_RECORD_FORMAT, &99u64.to_be_bytes())
            .expect("mark");
        db.flush().expect("flush");
    }
    let err = Store::open(&StoreConfig::new(&path))
        .err()
        .expect("must refuse")
        .to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("format 99") && err.contains("newer shop"),
        "{err}"
    );
}

/// An upgraded primary on the old store and a fresh replica of the new shop converge:
/// the replica receives the old WAL records upgraded, serves the same product and order,
/// and both stores hold byte-identical data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_primary_replicates_its_old_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary_dir = dir.path().join("primary");
    copy_fixture(&primary_dir);
    let primary = start(&primary_dir, |_| {}).await;
    let primary_addr = primary.addr.to_string();
    let replica = start(&dir.path().join("replica"), |c| {
        c.replication.primary_addr = Some(primary_addr);
        c.replication.replica_id = "r1".into();
    })
    .await;
    let caught_up = eventually(Duration::from_secs(10), || async {
        replica.status().await.last_lsn >= 14
    })
    .await;
    assert!(caught_up, "replica did not catch up");
    for shop in [&primary, &replica] {
        let tea = get_product(&mut shop.client(), "p-000000000001".into()).await;
        assert_eq!((tea.name.as_str(), tea.stock), ("Green tea", 37));
        let order = get_order(&mut shop.client(), "o-000000000002".into()).await;
        assert_eq!(order.status, pb::OrderStatus::Cancelled as i32);
    }
    let (primary_dir, replica_dir) = (primary.data_dir.clone(), replica.data_dir.clone());
    replica.stop().await;
    primary.stop().await;
    let digests = tokio::task::spawn_blocking(move || {
        [primary_dir, replica_dir].map(|d| {
            Store::open(&StoreConfig::new(d))
                .expect("open")
                .digest()
                .expect("digest")
        })
    })
    .await
    .expect("join");
    assert_eq!(digests[0], digests[1]);
}
