//! Who may change state. The policy file in dbus/ is the first gate; this
//! is the second, so a permissive bus configuration cannot open the
//! mutating methods to everyone, and callers get a layerd error name.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::OnceCell;
use zbus::message::Header;
use zbus::{fdo::DBusProxy, Connection};

use super::error::DbusError;

#[derive(Default)]
pub struct Access {
    proxy: OnceCell<DBusProxy<'static>>,
    /// Unique bus names are never reused, so their uid can be cached.
    uids: Mutex<HashMap<String, u32>>,
}

const CACHE_MAX: usize = 4096;

impl Access {
    /// Ok if the caller is root.
    pub async fn require_root(
        &self,
        conn: &Connection,
        hdr: &Header<'_>,
        method: &str,
    ) -> Result<(), DbusError> {
        let sender = hdr.sender().ok_or_else(|| {
            DbusError::AccessDenied(format!("{method}: the message has no sender"))
        })?;
        let cached = crate::shared::sync::lock(&self.uids)
            .get(sender.as_str())
            .copied();
        let uid = match cached {
            Some(uid) => uid,
            None => {
                let proxy = self
                    .proxy
                    .get_or_try_init(|| async {
                        DBusProxy::builder(conn)
                            .cache_properties(zbus::proxy::CacheProperties::No)
                            .build()
                            .await
                    })
                    .await?;
                let uid = proxy
                    .get_connection_unix_user(sender.clone().into())
                    .await
                    .map_err(|e| {
                        DbusError::AccessDenied(format!(
                            "{method}: cannot tell who the caller is: {e}"
                        ))
                    })?;
                let mut cache = crate::shared::sync::lock(&self.uids);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(sender.to_string(), uid);
                uid
            }
        };
        if uid == 0 {
            Ok(())
        } else {
            Err(DbusError::AccessDenied(format!(
                "{method} is for root only (caller uid {uid}); Stat, Walk, Usage and properties are open to all"
            )))
        }
    }
}
