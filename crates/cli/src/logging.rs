//! Logs go to stderr: pretty on a terminal, JSON lines otherwise or with `--log-format json`.
//! `RUST_LOG` filters (default `info`). [`crate::telemetry`] adds its exporting layer here.
use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::Registry;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber once; later calls (tests building several apps) keep the first.
/// `traces` gets spans and events at `info` and above whatever `RUST_LOG` says: turning the
/// logs down to warnings must not switch tracing off.
pub fn init(format: &str, traces: Option<Box<dyn Layer<Registry> + Send + Sync>>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        "json" => true,
        "pretty" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // The innermost span (a request, a delivery attempt) names what a line is about; the
    // whole list of enclosing spans on every line would only repeat it.
    let logs = if json {
        logs.json()
            .flatten_event(true)
            .with_span_list(false)
            .boxed()
    } else {
        logs.boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(traces.map(|traces| traces.with_filter(LevelFilter::INFO)))
        .with(logs.with_filter(filter))
        .try_init();
}
