//! Logging with `tracing`: to journald under systemd (structured fields
//! become journal fields), to stderr otherwise. The level comes from
//! LAYERD_LOG (tracing's EnvFilter syntax), default `info`. The gRPC
//! stack under the containerd adapter (h2, hyper, tower, tonic) stays at
//! `info` unless LAYERD_LOG names it: at debug, h2 logs every frame.
//!
//! In the journal, fields keep their names upper-cased and without
//! tracing-journald's default `F_` prefix, so `journalctl -u layerd
//! POOL=main` and `-o json` show POOL, LAYER_KEY, JOB_ID, OPERATION and
//! ERRNO as they are. Fields of enclosing spans (a job's pool, id and
//! operation) are added to every event inside them. Our field names never
//! start with `_` (trusted fields) nor clash with MESSAGE/PRIORITY. JOB_ID
//! is also the name systemd gives its own job ids in "Starting …" lines of
//! `journalctl -u layerd`; ours carry SYSLOG_IDENTIFIER=layerd.

use std::path::Path;

use tracing_journald::Priority;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Whether we run under systemd's journal: a service's stdout/stderr is
/// connected to it (JOURNAL_STREAM) or its native socket exists.
fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() || Path::new(JOURNAL_SOCKET).exists()
}

/// Crates whose debug output is transport noise, not layerd's story.
const TRANSPORT: &[&str] = &["h2", "hyper", "tower", "tonic"];

/// LAYERD_LOG's directives, with `<crate>=info` for each transport crate
/// the spec does not name itself.
fn filter_spec(spec: &str) -> String {
    let named = |krate: &str| {
        spec.split(',').any(|d| {
            let target = d.split('=').next().unwrap_or("").trim();
            target == krate || target.starts_with(&format!("{krate}::"))
        })
    };
    let mut out = spec.to_string();
    for krate in TRANSPORT.iter().filter(|k| !named(k)) {
        out.push_str(&format!(",{krate}=info"));
    }
    out
}

pub fn init() {
    let spec = std::env::var("LAYERD_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(filter_spec(&spec)).unwrap_or_else(|e| {
        eprintln!("layerd: LAYERD_LOG={spec:?} is not a filter ({e}); logging at info");
        EnvFilter::new(filter_spec("info"))
    });
    let registry = tracing_subscriber::registry().with(filter);
    // Under systemd stderr is the journal too, but without fields; prefer
    // the native protocol whenever it is there.
    if under_journald() && std::env::var_os("LAYERD_LOG_STDERR").is_none() {
        match tracing_journald::layer() {
            Ok(j) => {
                // syslog's meaning: info is "informational" (6), not
                // "notice" (5), tracing-journald's default for INFO.
                let j = j
                    .with_syslog_identifier("layerd".into())
                    .with_field_prefix(None)
                    .with_priority_mappings(tracing_journald::PriorityMappings {
                        error: Priority::Error,
                        warn: Priority::Warning,
                        info: Priority::Informational,
                        debug: Priority::Debug,
                        trace: Priority::Debug,
                    });
                registry.with(j).init();
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

#[cfg(test)]
mod tests {
    use super::filter_spec;

    #[test]
    fn transport_crates_stay_at_info_unless_named() {
        assert_eq!(
            filter_spec("debug"),
            "debug,h2=info,hyper=info,tower=info,tonic=info"
        );
        assert_eq!(
            filter_spec("debug,h2=trace"),
            "debug,h2=trace,hyper=info,tower=info,tonic=info"
        );
        assert_eq!(
            filter_spec("tonic::transport=debug"),
            "tonic::transport=debug,h2=info,hyper=info,tower=info"
        );
    }
}
