//! A call's caller, watched while its Apply or Export runs: when the
//! caller's unique name leaves the bus (NameOwnerChanged with no new
//! owner: the client closed its connection or died), the call is cancelled
//! (engine/diff/watch.rs), so a descriptor that never ends cannot hold the
//! layer for good.

use futures_util::StreamExt;
use zbus::message::Header;
use zbus::Connection;

use crate::engine::diff::watch::{Cancel, Stopped};

/// Stops watching when dropped.
pub struct Watch(Option<tokio::task::JoinHandle<()>>);

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// Cancels `cancel` once the sender of `hdr` leaves the bus. Without a
/// sender (a peer-to-peer connection) or a bus to ask, nothing is watched:
/// the idle timeout and SIGTERM still end the call.
pub async fn watch(conn: &Connection, hdr: &Header<'_>, cancel: &Cancel) -> Watch {
    let Some(sender) = hdr.sender().map(|s| s.to_owned()) else {
        return Watch(None);
    };
    let dbus = match zbus::fdo::DBusProxy::new(conn).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the caller");
            return Watch(None);
        }
    };
    let mut changes = match dbus
        .receive_name_owner_changed_with_args(&[(0, sender.as_str())])
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, caller = %sender, "cannot watch the caller");
            return Watch(None);
        }
    };
    // The caller may have left before the match rule was in place.
    let name = zbus::names::BusName::from(sender.clone());
    if let Ok(false) = dbus.name_has_owner(name).await {
        cancel.cancel(Stopped::CallerLeft);
        return Watch(None);
    }
    let cancel = cancel.clone();
    Watch(Some(tokio::spawn(async move {
        while let Some(sig) = changes.next().await {
            let Ok(args) = sig.args() else { continue };
            if args.name().as_str() == sender.as_str() && args.new_owner().is_none() {
                tracing::info!(caller = %sender, "the caller left the bus: stopping its call");
                cancel.cancel(Stopped::CallerLeft);
                return;
            }
        }
    })))
}
