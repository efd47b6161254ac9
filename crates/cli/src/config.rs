//! Configuration: documented defaults, then a TOML file (`--config`, `FLUXCB_CONFIG`, or
//! `./fluxcb.toml` if present), then `FLUXCB_*` environment variables, then command-line flags.
//! Everything is parsed and checked once at start-up into [`Settings`]; a bad value stops the
//! process with a message naming the setting.
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use url::Url;

/// Every setting, as written in the config file (keys) or the environment (`FLUXCB_` + key in
/// upper case). `fluxcb.example.toml` in the repository documents each one.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub backend: String,
    pub api_key: Option<String>,
    pub signing_secret: Option<String>,
    /// The legacy services' shared secret (`X-Flux-Signature`), for callbacks in the legacy
    /// wire format. Used as its UTF-8 bytes, as the legacy sender did.
    pub legacy_signing_secret: Option<String>,
    /// The legacy PostgreSQL database (`postgres://…`) while the legacy service still runs:
    /// rows created through the legacy API take ids from its sequence, and `external_id`s
    /// stay unique across both sides.
    pub legacy_database_url: Option<String>,
    /// Base URL of the legacy insert service (`flux-callme-service`), for shadow and split mode.
    pub legacy_upstream: Option<String>,
    /// Base URL of the legacy sending service, for the `send` action; default: legacy_upstream.
    pub legacy_send_upstream: Option<String>,
    /// `off`, `shadow` or `split`: the migration switch until it is set at runtime
    /// (`PUT /v1/admin/migration`), which then wins.
    pub migration_mode: String,
    /// 0–100: the share of new legacy-API callbacks fluxcb takes in split mode.
    pub cutover_percent: u8,
    /// Receivers ready for the new format: `origin=format` pairs (`https://a.example.com=both,
    /// https://b.example.com:8443=standard_webhooks`) for callbacks created through the legacy
    /// API, which otherwise use the legacy format.
    pub legacy_receiver_formats: String,
    /// Requests per second each API key may make (bursts of twice that); 0: no limit.
    pub api_rate_limit: u32,
    pub allow_private_targets: String,
    pub retry_schedule: String,
    pub max_attempts: u32,
    pub timeout_ms: u32,
    pub connect_timeout_ms: u32,
    pub ca_bundle: Option<PathBuf>,
    pub retention: String,
    pub idempotency_retention: String,
    pub max_in_flight: usize,
    pub destination_max_in_flight: usize,
    /// How long a callback to a paused destination waits before it is looked at again.
    pub paused_recheck: String,
    /// What a dead letter does to the later callbacks of its ordering key: continue or hold.
    pub ordering_after_dead_letter: String,
    /// Where the operational event stream goes (signed with the `_system` tenant's secret);
    /// empty: nowhere.
    pub ops_events_url: String,
    /// Comma-separated: callback.failed, destination.circuit_opened, destination.recovered
    /// (empty: all three).
    pub ops_events_types: String,
    /// How long a destination stays healthy before `destination.recovered` is sent; a
    /// re-opening within it sends nothing.
    pub ops_events_quiet: String,
    pub body_limit: usize,
    pub batch_body_limit: usize,
    pub log_format: String,
    /// Where spans go over OTLP/HTTP (protobuf): the collector's base URL, as in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is appended). Empty: the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` variables decide,
    /// and with neither set nothing is exported.
    pub otlp_endpoint: String,
    /// The share of new traces exported (0 to 1); a request that carries a `traceparent`
    /// follows its caller's decision.
    pub otlp_sample_ratio: f64,
    /// AWS backend: how often the sweeper runs in container mode (Lambda runs it on the
    /// template's schedule).
    pub sweep_interval: String,
    /// AWS backend: how long a sent queue message may be overdue before the sweeper presumes it
    /// lost and sends another.
    pub sweep_grace: String,
    /// AWS backend: how long a worker holds a callback it claimed. One that dies holding it
    /// gives it back when this runs out (the sweeper returns it to waiting). At least
    /// `timeout_ms` plus 5 s; an attempt whose callback asks for a longer timeout is cut to
    /// fit in the lease.
    pub aws_claim_lease: String,
    /// AWS backend: the callback table, the work queue and its dead letter queue.
    pub dynamodb_table: String,
    pub sqs_queue_url: String,
    pub sqs_dlq_url: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: "./fluxcb-data".into(),
            backend: "sqlite".into(),
            api_key: None,
            signing_secret: None,
            legacy_signing_secret: None,
            legacy_database_url: None,
            legacy_upstream: None,
            legacy_send_upstream: None,
            migration_mode: "off".into(),
            cutover_percent: 0,
            legacy_receiver_formats: String::new(),
            api_rate_limit: 0,
            allow_private_targets: String::new(),
            retry_schedule: "5s,30s,2m,10m,30m,1h,3h,6h,12h,24h".into(),
            max_attempts: fluxcb_core::retry::DEFAULT_MAX_ATTEMPTS,
            timeout_ms: 15_000,
            connect_timeout_ms: 5_000,
            ca_bundle: None,
            retention: "30d".into(),
            idempotency_retention: "24h".into(),
            max_in_flight: 512,
            destination_max_in_flight: 64,
            paused_recheck: "15s".into(),
            ordering_after_dead_letter: "continue".into(),
            ops_events_url: String::new(),
            ops_events_types: String::new(),
            ops_events_quiet: "5m".into(),
            body_limit: 256 * 1024,
            batch_body_limit: 4 * 1024 * 1024,
            log_format: "auto".into(),
            otlp_endpoint: String::new(),
            otlp_sample_ratio: 1.0,
            sweep_interval: "60s".into(),
            sweep_grace: "2m".into(),
            aws_claim_lease: "90s".into(),
            dynamodb_table: String::new(),
            sqs_queue_url: String::new(),
            sqs_dlq_url: String::new(),
        }
    }
}

const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "backend",
    "api_key",
    "signing_secret",
    "legacy_signing_secret",
    "legacy_database_url",
    "legacy_upstream",
    "legacy_send_upstream",
    "migration_mode",
    "cutover_percent",
    "legacy_receiver_formats",
    "api_rate_limit",
    "allow_private_targets",
    "retry_schedule",
    "max_attempts",
    "timeout_ms",
    "connect_timeout_ms",
    "ca_bundle",
    "retention",
    "idempotency_retention",
    "max_in_flight",
    "destination_max_in_flight",
    "paused_recheck",
    "ordering_after_dead_letter",
    "ops_events_url",
    "ops_events_types",
    "ops_events_quiet",
    "body_limit",
    "batch_body_limit",
    "log_format",
    "otlp_endpoint",
    "otlp_sample_ratio",
    "sweep_interval",
    "sweep_grace",
    "aws_claim_lease",
    "dynamodb_table",
    "sqs_queue_url",
    "sqs_dlq_url",
];

/// Flags that override everything else.
#[derive(Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

/// Trace export as configured: see [`Config::trace_export`].
#[derive(Clone, Debug, PartialEq)]
pub struct TraceExport {
    /// The full traces URL from `otlp_endpoint`; None: the exporter reads the standard
    /// `OTEL_EXPORTER_OTLP_*` variables itself.
    pub traces_url: Option<String>,
    pub sample_ratio: f64,
}

pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, String> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    match file {
        Some(path) if !path.exists() => {
            return Err(format!("config file {} does not exist", path.display()))
        }
        Some(path) => fig = fig.merge(Toml::file(path)),
        None if Path::new("fluxcb.toml").exists() => fig = fig.merge(Toml::file("fluxcb.toml")),
        None => {}
    }
    fig.merge(Env::prefixed("FLUXCB_").only(ENV_KEYS))
        .merge(Serialized::defaults(overrides))
        .extract()
        .map_err(|e| format!("invalid configuration: {e}"))
}

impl Config {
    /// Whether spans are exported, and where: `otlp_endpoint`, else the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`; None when none of
    /// them is set, or `OTEL_SDK_DISABLED=true`.
    pub fn trace_export(&self) -> Result<Option<TraceExport>, String> {
        let env_set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        if !(0.0..=1.0).contains(&self.otlp_sample_ratio) {
            return Err(format!(
                "otlp_sample_ratio (FLUXCB_OTLP_SAMPLE_RATIO): `{}` is not between 0 and 1",
                self.otlp_sample_ratio
            ));
        }
        let endpoint = self.otlp_endpoint.trim();
        let traces_url = if endpoint.is_empty() {
            None
        } else {
            match Url::parse(endpoint) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                    Some(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                }
                _ => {
                    return Err(format!(
                        "otlp_endpoint (FLUXCB_OTLP_ENDPOINT): `{endpoint}` is not an http(s) URL like http://127.0.0.1:4318"
                    ))
                }
            }
        };
        let configured = traces_url.is_some()
            || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            || env_set("OTEL_EXPORTER_OTLP_ENDPOINT");
        let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim() == "true");
        Ok((configured && !disabled).then_some(TraceExport {
            traces_url,
            sample_ratio: self.otlp_sample_ratio,
        }))
    }
}

mod settings;
pub use settings::{AwsNames, Backend, Settings};

#[cfg(test)]
mod tests;
