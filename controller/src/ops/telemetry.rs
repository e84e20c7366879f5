//! Logging set-up: `tracing` events to standard error, filtered by `RUST_LOG`.
//!
//! Standard error keeps logs apart from what a command prints on standard output; in a Pod both
//! reach the container log. JSON output is for log collectors, plain text for people.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Filter used when `RUST_LOG` is unset or invalid.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber: `EnvFilter` from `RUST_LOG` (default [`DEFAULT_FILTER`]),
/// JSON lines when `json` is true. Calling it again does nothing: the first subscriber stays.
pub fn init(json: bool) {
    install(json, std::io::stderr, std::io::stderr().is_terminal());
}

/// [`init`] with any writer; returns whether this call installed the subscriber.
fn install<W>(json: bool, writer: W, ansi: bool) -> bool
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let (filter, invalid) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(error) => {
            // Unset is the normal case; a set but invalid filter deserves a warning.
            let invalid = std::env::var_os(EnvFilter::DEFAULT_ENV).map(|_| error);
            (EnvFilter::new(DEFAULT_FILTER), invalid)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = if json {
        builder.json().try_init().is_ok()
    } else {
        builder.with_ansi(ansi).try_init().is_ok()
    };
    if installed && let Some(error) = invalid {
        tracing::warn!(%error, "ignoring invalid RUST_LOG, logging at {DEFAULT_FILTER}");
    }
    installed
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::fmt::TestWriter;

    #[test]
    fn later_calls_keep_the_first_subscriber_without_panicking() {
        // The test writer keeps log lines in the captured test output. Another test of this
        // binary may have installed a subscriber first; either way no call may panic.
        let _ = super::install(true, TestWriter::new(), false);
        assert!(!super::install(false, TestWriter::new(), false));
        super::init(false);
        super::init(true);
        tracing::info!("still logging");
    }
}
