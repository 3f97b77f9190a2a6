//! One descriptor-relative file toolkit: statx metadata (`meta`), the
//! bounded-descriptor directory walk (`walk`), extended attributes of every
//! namespace (`xattr`), reflink-or-copy file data (`data`), whole-tree
//! copies for the `vfs` driver (`copy`) and disk usage (`usage`). Apply and
//! Export take metadata and xattrs from here too.
//!
//! A `vfs` child layer is a complete copy of its parent directory, so the
//! copy has to carry everything a container root file system depends on:
//! owners, setuid/setgid/sticky bits, every extended attribute (including
//! `trusted.overlay.*` and `security.capability`), hard links, device nodes,
//! fifos, sockets, symlinks taken verbatim, and nanosecond times. Where the
//! file system can share extents (xfs, btrfs) each regular file is cloned
//! with `FICLONE`, so a child costs metadata only; elsewhere data is copied
//! with `copy_file_range` (falling back to `pread`/`pwrite`), skipping holes.
//!
//! Layer contents are untrusted, so a walk never follows a symlink and
//! never leaves its tree: every operation is relative to an open directory
//! descriptor and uses `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`, and each opened
//! directory or file is checked against the inode that was listed. It never
//! crosses into another mount inside the source.

mod copy;
mod data;
mod error;
mod meta;
mod usage;
mod walk;
mod xattr;

pub use copy::{copy_tree, CopyStats};
pub use data::reflink_supported;
pub use error::CopyError;
pub use meta::{lstat_at, Meta};
pub use usage::tree_usage;
pub use walk::read_names;
pub use xattr::{set_xattr_at, xattrs_at};

#[cfg(test)]
mod tests;
