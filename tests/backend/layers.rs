//! Layer lifecycle: create, write through the mounts, commit, children and
//! views, remove and discard, and the errors of a wrong call.

use std::fs;

use crate::pool::{assert_kind, kind_of, l, Kind, Pool, MIB};

/// An active layer takes writes through the specs `mounts` hands out
/// (mounted with mount(8), as a runtime does) and keeps them: the same
/// file reads back through `Backend::mount`.
pub fn write_through_mounts(p: &mut Pool) {
    let b = p.b();
    assert!(!b.exists(1));
    b.create(l(1, Kind::Active, &[])).expect("create");
    assert!(b.exists(1));
    {
        let m = p.mount_specs(l(1, Kind::Active, &[]));
        fs::write(m.path("hello"), b"world").expect("write through the specs");
        fs::create_dir(m.path("d")).unwrap();
    }
    let m = p.mount(l(1, Kind::Active, &[]));
    assert_eq!(fs::read(m.path("hello")).unwrap(), b"world");
    assert!(m.path("d").is_dir());
}

/// A child of a committed layer sees its parent's files; what the child
/// writes stays out of the parent.
pub fn child_sees_committed_parent(p: &mut Pool) {
    let b = p.b();
    b.create(l(1, Kind::Active, &[])).unwrap();
    {
        let m = p.mount(l(1, Kind::Active, &[]));
        fs::write(m.path("a"), b"parent").unwrap();
    }
    b.commit(1).expect("commit");
    assert!(b.exists(1));
    b.create(l(2, Kind::Active, &[1])).expect("create a child");
    {
        let m = p.mount_specs(l(2, Kind::Active, &[1]));
        assert_eq!(fs::read(m.path("a")).unwrap(), b"parent");
        fs::write(m.path("b"), b"child").unwrap();
        fs::write(m.path("a"), b"changed").unwrap();
    }
    let m = p.mount(l(2, Kind::Active, &[1]));
    assert_eq!(fs::read(m.path("a")).unwrap(), b"changed");
    assert_eq!(fs::read(m.path("b")).unwrap(), b"child");
    let parent = p.mount(l(1, Kind::Committed, &[]));
    assert_eq!(fs::read(parent.path("a")).unwrap(), b"parent");
    assert!(
        !parent.path("b").exists(),
        "the child's file is in the parent"
    );
}

/// A view shows its parent's files read-only.
pub fn view_is_read_only(p: &mut Pool) {
    let b = p.b();
    b.create(l(1, Kind::Active, &[])).unwrap();
    p.write(l(1, Kind::Active, &[]), "f", 64 << 10);
    b.commit(1).unwrap();
    b.create(l(2, Kind::View, &[1])).expect("create a view");
    assert!(b.exists(2));
    for m in [
        p.mount(l(2, Kind::View, &[1])),
        p.mount_specs(l(2, Kind::View, &[1])),
    ] {
        assert_eq!(fs::metadata(m.path("f")).unwrap().len(), 64 << 10);
        let e = fs::write(m.path("new"), b"x").expect_err("a view took a write");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }
}

/// `remove` and `discard` make a layer not exist; `purge` then frees the
/// removed layer's space, and a second purge has nothing left.
pub fn remove_discard_purge(p: &mut Pool) {
    let b = p.b();
    b.create(l(1, Kind::Active, &[])).unwrap();
    p.write(l(1, Kind::Active, &[]), "f", 4 * MIB);
    b.create(l(2, Kind::Active, &[])).unwrap();
    b.remove(1).expect("remove");
    assert!(!b.exists(1), "a removed layer exists");
    b.discard(2).expect("discard");
    assert!(!b.exists(2), "a discarded layer exists");
    let freed = b.purge().expect("purge");
    assert!(freed > 0, "purge freed nothing of a removed 4 MiB layer");
    assert_eq!(
        b.purge().expect("purge again"),
        0,
        "a second purge freed more"
    );
    // The ids are free again.
    b.create(l(1, Kind::Active, &[]))
        .expect("create the removed id again");
    let m = p.mount(l(1, Kind::Active, &[]));
    assert!(
        !m.path("f").exists(),
        "a new layer holds the removed one's file"
    );
}

/// The errors of wrong calls. `remove`, `discard` and `commit` are
/// idempotent (recovery repeats them): a missing id or a second commit is
/// no error. A missing parent or an id that exists fails, and `discard`
/// undoes what the failed `create` left.
pub fn errors(p: &mut Pool) {
    let b = p.b();
    b.remove(99).expect("remove of a missing id");
    b.discard(99).expect("discard of a missing id");
    assert!(!b.exists(99));

    b.create(l(1, Kind::Active, &[])).unwrap();
    b.commit(1).expect("commit");
    b.commit(1).expect("commit again");
    assert!(b.exists(1));

    let e = b
        .create(l(2, Kind::Active, &[42]))
        .expect_err("a child of a missing parent was created");
    assert_eq!(kind_of(&e), "Internal", "{e}");
    b.discard(2).expect("discard after a failed create");
    assert!(!b.exists(2), "the failed create left layer 2");

    assert_kind(
        b.create(l(1, Kind::Active, &[])),
        "Internal",
        "create of an existing id",
    );
    assert!(b.exists(1), "a failed create took the existing layer");
}
