//! Logging with `tracing`: to journald when its socket exists (structured
//! fields become journal fields), to stderr otherwise. The level comes from
//! LAYERD_LOG (tracing's EnvFilter syntax), default `info`.

use std::path::Path;

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

pub fn init() {
    let filter = EnvFilter::try_from_env("LAYERD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // Under systemd stderr is the journal too, but without fields; prefer
    // the native protocol whenever it is there.
    if Path::new(JOURNAL_SOCKET).exists() && std::env::var_os("LAYERD_LOG_STDERR").is_none() {
        match tracing_journald::layer() {
            Ok(j) => {
                registry
                    .with(j.with_syslog_identifier("layerd".into()))
                    .init();
                return;
            }
            Err(e) => eprintln!("layerd: journald unavailable ({e}); logging to stderr"),
        }
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .init();
}
