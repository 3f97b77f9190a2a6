//! One snapshotter's key space. containerd's keys (`<namespace>/<n>/<key>`)
//! are unique within one containerd and one snapshotter only, and containerd
//! removes what a snapshotter lists but its metadata does not know (its
//! garbage collector). So each socket sees only its own keys: layerd stores
//! them as `containerd-<name>/<key>`, and this prefix is added to every key
//! that comes in and taken off every key that goes out.

use containerd_snapshots::tonic::Status;

#[derive(Debug, Clone)]
pub struct Scope {
    prefix: String,
}

impl Scope {
    pub fn new(snapshotter: &str) -> Scope {
        Scope {
            prefix: format!("containerd-{snapshotter}/"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The store's key for containerd's `key`. An empty key is refused
    /// here: with the prefix it would no longer look empty.
    pub fn key(&self, what: &str, key: &str) -> Result<String, Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{what} must not be empty"
            )));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    /// A parent: "" stays "" (no parent).
    pub fn parent(&self, parent: &str) -> String {
        if parent.is_empty() {
            String::new()
        } else {
            format!("{}{parent}", self.prefix)
        }
    }

    /// containerd's view of a stored key; one outside this scope (a parent
    /// a D-Bus client chose) keeps its whole key.
    pub fn outside(&self, stored: &str) -> String {
        stored
            .strip_prefix(&self.prefix)
            .unwrap_or(stored)
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_empty_is_refused() {
        let s = Scope::new("main");
        let k = s.key("key", "default/3/sha256:ab").unwrap();
        assert_eq!(k, "containerd-main/default/3/sha256:ab");
        assert_eq!(s.outside(&k), "default/3/sha256:ab");
        assert_eq!(s.parent(""), "");
        assert_eq!(s.outside("other"), "other");
        let e = s.key("key", "").unwrap_err();
        assert_eq!(e.code(), containerd_snapshots::tonic::Code::InvalidArgument);
    }
}
