//! Space: per-layer usage, the pool's space, trim, and size limits.

use layerd::backend::JobControl;

use crate::pool::{assert_kind, l, Driver, Kind, Pool, MIB};

/// A layer's usage grows with what is written into it, and a child's
/// counts only its own changes, not its parent's files.
pub fn usage_grows(p: &mut Pool) {
    let b = p.b();
    b.create(l(1, Kind::Active, &[])).unwrap();
    let (bytes0, inodes0) = b.usage(l(1, Kind::Active, &[])).expect("usage");
    p.write(l(1, Kind::Active, &[]), "f", 8 * MIB);
    let (bytes1, inodes1) = p.b().usage(l(1, Kind::Active, &[])).unwrap();
    assert!(
        bytes1 >= bytes0 + 6 * MIB,
        "usage {bytes0} → {bytes1} bytes after writing 8 MiB"
    );
    assert!(
        inodes1 > inodes0,
        "inodes {inodes0} → {inodes1} after a new file"
    );
    let b = p.b();
    b.commit(1).unwrap();
    b.create(l(2, Kind::Active, &[1])).unwrap();
    let (child, _) = b.usage(l(2, Kind::Active, &[1])).unwrap();
    assert!(
        child < MIB,
        "an unchanged child uses {child} bytes: its parent's 8 MiB are counted"
    );
}

/// The pool's space adds up; only btrfs knows unallocated device space.
pub fn space_is_sane(p: &mut Pool) {
    let s = p.b().space().expect("space");
    assert!(s.data_size > 0, "{s:?}");
    assert!(s.data_used <= s.data_size, "{s:?}");
    assert!(s.metadata_used <= s.metadata_size, "{s:?}");
    assert!(!s.read_only, "{s:?}");
    match p.driver {
        Driver::Btrfs => {
            let (un, dev) = (s.unallocated.unwrap(), s.device_size.unwrap());
            assert!(un > 0 && un <= dev, "{s:?}");
            assert!(dev >= s.data_size, "{s:?}");
        }
        _ => assert_eq!((s.unallocated, s.device_size), (None, None), "{s:?}"),
    }
}

/// Trim on an idle pool succeeds and reports itself done.
pub fn trim_idle_pool(p: &mut Pool) {
    let b = p.b();
    b.create(l(1, Kind::Active, &[])).unwrap();
    p.write(l(1, Kind::Active, &[]), "f", 4 * MIB);
    p.b().remove(1).unwrap();
    p.b().purge().unwrap();
    let ctl = JobControl::default();
    let trimmed = p.b().trim(&ctl).expect("trim");
    assert_eq!(ctl.bytes(), trimmed);
    assert_eq!(ctl.progress(), Some(1.0));
}

/// Only btrfs limits a layer's size (qgroups): writes past the limit fail
/// with EDQUOT. Elsewhere `limit_size` is NotSupported, and
/// `can_limit_size` says so before anything is made.
pub fn limit_size(p: &mut Pool) {
    let b = p.b();
    b.create(l(1, Kind::Active, &[])).unwrap();
    if p.driver != Driver::Btrfs {
        assert!(!b.can_limit_size());
        assert_kind(b.limit_size(1, 4 * MIB), "NotSupported", "limit_size");
        return;
    }
    assert!(b.can_limit_size());
    b.limit_size(1, 4 * MIB).expect("limit_size");
    let m = p.mount(l(1, Kind::Active, &[]));
    let e = crate::common::write_pattern(&m.path("big"), 32 * MIB, 1)
        .expect_err("32 MiB went into a layer limited to 4 MiB");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
}
