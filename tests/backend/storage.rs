//! What a pool's storage holds beyond layers: the scan for
//! reconciliation, quarantine, the binding token, and how diffs and deep
//! chains reach a driver.

use std::collections::BTreeSet;
use std::fs;

use layerd::backend::{DiffTree, Found};

use crate::pool::{assert_kind, exists, l, Driver, Kind, Pool};

fn scan(p: &Pool) -> (BTreeSet<u64>, Vec<std::path::PathBuf>) {
    let mut ids = BTreeSet::new();
    let mut unknown = Vec::new();
    for f in p.b().scan().expect("scan") {
        match f {
            Found::Layer(id) => assert!(ids.insert(id), "scan listed {id} twice"),
            Found::Unknown(path) => unknown.push(path),
        }
    }
    (ids, unknown)
}

/// `scan` lists exactly the layers that exist: not removed or discarded
/// ones, and nothing unknown in a pool layerd alone wrote.
pub fn scan_reports_what_exists(p: &mut Pool) {
    assert_eq!(scan(p), (BTreeSet::new(), vec![]), "a fresh pool");
    let b = p.b();
    b.create(l(1, Kind::Active, &[])).unwrap();
    b.commit(1).unwrap();
    b.create(l(2, Kind::Active, &[1])).unwrap();
    b.create(l(3, Kind::View, &[1])).unwrap();
    b.create(l(4, Kind::Active, &[])).unwrap();
    b.create(l(5, Kind::Active, &[])).unwrap();
    b.remove(4).unwrap();
    b.discard(5).unwrap();
    assert_eq!(scan(p), (BTreeSet::from([1, 2, 3]), vec![]));
    p.b().purge().unwrap();
    assert_eq!(scan(p), (BTreeSet::from([1, 2, 3]), vec![]), "after purge");
}

/// Something layerd did not name is reported as unknown and `quarantine`
/// moves it out of the pool, intact; thin keeps unknown devices where
/// they are (NotSupported).
pub fn quarantine_moves_out(p: &mut Pool) {
    let junk = p.b().path().join("junk");
    if p.driver == Driver::Thin {
        assert_kind(p.b().quarantine(&junk), "NotSupported", "thin quarantine");
        return;
    }
    fs::create_dir(&junk).unwrap();
    fs::write(junk.join("data"), b"keep me").unwrap();
    p.b().create(l(1, Kind::Active, &[])).unwrap();
    assert_eq!(scan(p), (BTreeSet::from([1]), vec![junk.clone()]));
    let dest = p.b().quarantine(&junk).expect("quarantine");
    assert!(!exists(&junk), "quarantine left {}", junk.display());
    assert_eq!(fs::read(dest.join("data")).unwrap(), b"keep me");
    assert!(
        dest.starts_with(p.b().path()),
        "quarantined out of the pool: {}",
        dest.display()
    );
    assert_eq!(scan(p), (BTreeSet::from([1]), vec![]), "after quarantine");
}

/// The token is absent in a fresh pool, reads back what was written, and
/// survives reopening the pool.
pub fn token_round_trip(p: &mut Pool) {
    assert_eq!(p.b().read_token().expect("read token"), None);
    p.b().write_token(7).expect("write token");
    assert_eq!(p.b().read_token().unwrap(), Some(7));
    p.b().write_token(u64::MAX).expect("overwrite token");
    assert_eq!(p.b().read_token().unwrap(), Some(u64::MAX));
    p.reopen();
    assert_eq!(p.b().read_token().unwrap(), Some(u64::MAX), "after reopen");
}

/// How Apply and Export reach each driver's files (ARCHITECTURE.md):
/// overlay's upper (a parentless layer's directory is its whole tree),
/// vfs's and btrfs's whole tree, thin through a mount.
pub fn diff_tree_kind(p: &mut Pool) {
    let b = p.b();
    b.create(l(1, Kind::Active, &[])).unwrap();
    b.commit(1).unwrap();
    b.create(l(2, Kind::Active, &[1])).unwrap();
    let dir = |id: u64| b.path().join(id.to_string());
    let (root, child) = match p.driver {
        Driver::Overlay => (DiffTree::Full(dir(1)), DiffTree::Upper(dir(2))),
        Driver::Vfs | Driver::Btrfs => (DiffTree::Full(dir(1)), DiffTree::Full(dir(2))),
        Driver::Thin => (DiffTree::Mount, DiffTree::Mount),
    };
    assert_eq!(b.diff_tree(l(1, Kind::Committed, &[])).unwrap(), root);
    assert_eq!(b.diff_tree(l(2, Kind::Active, &[1])).unwrap(), child);
}

/// Only overlay limits a chain's depth (OVL_MAX_STACK).
pub fn max_depth(p: &mut Pool) {
    let want = match p.driver {
        Driver::Overlay => Some(500),
        _ => None,
    };
    assert_eq!(p.b().max_depth(), want);
}
