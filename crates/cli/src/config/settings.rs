//! The validated, typed settings a process runs with, and the one place a [`Config`] becomes
//! them: every value parsed and checked, every problem named by its key and variable.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fluxcb_core::callback::{Destination, WireFormat};
use fluxcb_core::migration::{MigrationMode, MigrationState};
use fluxcb_core::retry::{parse_schedule, RetryPolicy};
use fluxcb_core::signing::SigningSecret;
use fluxcb_core::target::parse_allow_list;
use ipnet::IpNet;
use url::Url;

use super::Config;

/// Where callbacks are stored and queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite store in `data_dir`: store and queue in one file.
    Sqlite,
    /// DynamoDB and SQS, named by `FLUXCB_DYNAMODB_TABLE`, `FLUXCB_SQS_QUEUE_URL` and
    /// `FLUXCB_SQS_DLQ_URL`.
    Aws,
}

/// Validated, typed settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub backend: Backend,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub api_key: Option<String>,
    pub signing_secret: Option<SigningSecret>,
    pub legacy_signing_secret: Option<std::sync::Arc<[u8]>>,
    pub legacy_database_url: Option<String>,
    pub legacy_upstream: Option<Url>,
    pub legacy_send_upstream: Option<Url>,
    pub migration: MigrationState,
    pub legacy_receiver_formats: Vec<(Destination, WireFormat)>,
    pub api_rate_limit: u32,
    pub allow_private_targets: Vec<IpNet>,
    pub retry: RetryPolicy,
    pub max_attempts: u32,
    pub timeout_ms: u32,
    pub connect_timeout: Duration,
    pub ca_bundle: Option<PathBuf>,
    pub retention: Duration,
    pub idempotency_retention: Duration,
    pub max_in_flight: usize,
    pub destination_max_in_flight: usize,
    pub paused_recheck: Duration,
    pub ordering_after_dead_letter: fluxcb_core::ordering::AfterDeadLetter,
    pub ops_events: Option<fluxcb_core::notify::OpsStream>,
    pub ops_events_quiet: Duration,
    pub body_limit: usize,
    pub batch_body_limit: usize,
    pub sweep_interval: Duration,
    pub sweep_grace: Duration,
    /// How long a claim lasts on the AWS backend (at least `timeout_ms` plus
    /// [`fluxcb_core::callback::LEASE_MARGIN_MS`]).
    pub aws_claim_lease: Duration,
    /// The AWS backend's table and queues; all three are set when the backend is `aws`.
    pub aws: Option<AwsNames>,
}

impl Settings {
    /// The attempt budget and timeout of a callback that sets neither.
    pub fn callback_defaults(&self) -> fluxcb_core::callback::CallbackDefaults {
        fluxcb_core::callback::CallbackDefaults {
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
        }
    }

    /// What the end of an attempt makes besides its transition: notifications (with the
    /// installation's attempt budget and timeout) and the operational stream's events.
    pub fn follow_ups(&self) -> std::sync::Arc<fluxcb_core::notify::FollowUpSettings> {
        std::sync::Arc::new(fluxcb_core::notify::FollowUpSettings {
            ops: self.ops_events.clone(),
            defaults: self.callback_defaults(),
        })
    }

    /// The breaker's side of the operational event stream (`None`: no stream configured).
    pub fn ops_events(&self) -> Option<std::sync::Arc<fluxcb_delivery::ops_events::OpsEvents>> {
        let stream = self.ops_events.clone()?;
        Some(std::sync::Arc::new(
            fluxcb_delivery::ops_events::OpsEvents::new(
                stream,
                self.ops_events_quiet,
                self.callback_defaults(),
                fluxcb_delivery::ops_events::node_name(),
            ),
        ))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsNames {
    pub table: String,
    pub queue_url: String,
    pub dlq_url: String,
}

impl Config {
    pub fn validate(&self) -> Result<Settings, String> {
        let mut errors = Vec::new();
        if let Err(e) = self.trace_export() {
            errors.push(e);
        }
        let listen = self.listen.parse::<SocketAddr>();
        require(
            &mut errors,
            listen.is_ok(),
            format!(
                "listen (FLUXCB_LISTEN): `{}` is not an address like 127.0.0.1:8080",
                self.listen
            ),
        );
        let backend = match self.backend.as_str() {
            "sqlite" => Some(Backend::Sqlite),
            "aws" if cfg!(feature = "aws") => Some(Backend::Aws),
            "aws" => {
                errors.push(
                    "backend (FLUXCB_BACKEND): this build has no AWS backend (it was built without the `aws` feature)"
                        .into(),
                );
                None
            }
            other => {
                errors.push(format!(
                    "backend (FLUXCB_BACKEND): `{other}` is not a backend; use sqlite or aws"
                ));
                None
            }
        };
        let mut duration = |key: &str, env: &str, text: &str| match humantime::parse_duration(text)
        {
            Ok(d) if !d.is_zero() => d,
            _ => {
                errors.push(format!(
                    "{key} ({env}): `{text}` is not a duration like 60s"
                ));
                Duration::from_secs(1)
            }
        };
        let sweep_interval = duration(
            "sweep_interval",
            "FLUXCB_SWEEP_INTERVAL",
            &self.sweep_interval,
        );
        let sweep_grace = duration("sweep_grace", "FLUXCB_SWEEP_GRACE", &self.sweep_grace);
        let paused_recheck = duration(
            "paused_recheck",
            "FLUXCB_PAUSED_RECHECK",
            &self.paused_recheck,
        );
        let aws_claim_lease = duration(
            "aws_claim_lease",
            "FLUXCB_AWS_CLAIM_LEASE",
            &self.aws_claim_lease,
        );
        let ops_events_quiet = duration(
            "ops_events_quiet",
            "FLUXCB_OPS_EVENTS_QUIET",
            &self.ops_events_quiet,
        );
        let ordering_after_dead_letter =
            self.ordering_after_dead_letter.parse().unwrap_or_else(|e| {
                errors.push(format!(
                    "ordering_after_dead_letter (FLUXCB_ORDERING_AFTER_DEAD_LETTER): {e}"
                ));
                fluxcb_core::ordering::AfterDeadLetter::default()
            });
        let ops_events =
            fluxcb_core::notify::OpsStream::parse(&self.ops_events_url, &self.ops_events_types)
                .unwrap_or_else(|e| {
                    errors.push(format!(
                        "ops_events_url / ops_events_types (FLUXCB_OPS_EVENTS_URL, \
                         FLUXCB_OPS_EVENTS_TYPES): {e}"
                    ));
                    None
                });
        let aws = (backend == Some(Backend::Aws)).then(|| AwsNames {
            table: self.dynamodb_table.clone(),
            queue_url: self.sqs_queue_url.clone(),
            dlq_url: self.sqs_dlq_url.clone(),
        });
        if let Some(names) = &aws {
            for (value, key) in [
                (&names.table, "dynamodb_table (FLUXCB_DYNAMODB_TABLE)"),
                (&names.queue_url, "sqs_queue_url (FLUXCB_SQS_QUEUE_URL)"),
                (&names.dlq_url, "sqs_dlq_url (FLUXCB_SQS_DLQ_URL)"),
            ] {
                if value.is_empty() {
                    errors.push(format!(
                        "{key}: the AWS backend needs it (`fluxcb aws bootstrap` creates the table and queues and prints the variables)"
                    ));
                }
            }
        }
        let secret = self
            .signing_secret
            .as_deref()
            .map(SigningSecret::parse)
            .transpose();
        if let Err(e) = &secret {
            errors.push(format!("signing_secret (FLUXCB_SIGNING_SECRET): {e}"));
        }
        let allow = parse_allow_list(&self.allow_private_targets);
        if let Err(e) = &allow {
            errors.push(format!(
                "allow_private_targets (FLUXCB_ALLOW_PRIVATE_TARGETS): {e}"
            ));
        }
        let schedule = parse_schedule(&self.retry_schedule);
        if let Err(e) = &schedule {
            errors.push(format!("retry_schedule (FLUXCB_RETRY_SCHEDULE): {e}"));
        }
        let retention = humantime::parse_duration(&self.retention);
        if let Err(e) = &retention {
            errors.push(format!(
                "retention (FLUXCB_RETENTION): `{}`: {e}",
                self.retention
            ));
        }
        let idem = humantime::parse_duration(&self.idempotency_retention);
        match &idem {
            Err(e) => errors.push(format!(
                "idempotency_retention (FLUXCB_IDEMPOTENCY_RETENTION): `{}`: {e}",
                self.idempotency_retention
            )),
            Ok(d) if *d < Duration::from_secs(24 * 3600) => errors.push(
                "idempotency_retention (FLUXCB_IDEMPOTENCY_RETENTION): keys are kept at least 24h"
                    .into(),
            ),
            Ok(_) => {}
        }
        require(
            &mut errors,
            (1..=fluxcb_core::callback::MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts),
            "max_attempts (FLUXCB_MAX_ATTEMPTS): between 1 and 50".into(),
        );
        require(
            &mut errors,
            (100..=fluxcb_core::callback::MAX_TIMEOUT_MS).contains(&self.timeout_ms),
            "timeout_ms (FLUXCB_TIMEOUT_MS): between 100 and 60000".into(),
        );
        // A lease that can end before its attempt does lets a second worker send the callback
        // while the first is still sending it.
        let shortest_lease = Duration::from_millis(
            u64::from(self.timeout_ms) + u64::from(fluxcb_core::callback::LEASE_MARGIN_MS),
        );
        let lease_parsed =
            humantime::parse_duration(&self.aws_claim_lease).is_ok_and(|d| !d.is_zero());
        require(
            &mut errors,
            !lease_parsed || aws_claim_lease >= shortest_lease,
            format!(
                "aws_claim_lease (FLUXCB_AWS_CLAIM_LEASE): `{}` is shorter than an attempt \
                 (timeout_ms, {} ms) plus {} s to record it; use at least {}",
                self.aws_claim_lease,
                self.timeout_ms,
                fluxcb_core::callback::LEASE_MARGIN_MS / 1000,
                humantime::format_duration(shortest_lease)
            ),
        );
        require(
            &mut errors,
            (100..=60_000).contains(&self.connect_timeout_ms),
            "connect_timeout_ms (FLUXCB_CONNECT_TIMEOUT_MS): between 100 and 60000".into(),
        );
        require(
            &mut errors,
            self.max_in_flight > 0,
            "max_in_flight: at least 1".into(),
        );
        require(
            &mut errors,
            self.destination_max_in_flight > 0,
            "destination_max_in_flight: at least 1".into(),
        );
        require(
            &mut errors,
            self.body_limit >= 1024,
            "body_limit: at least 1024 bytes".into(),
        );
        require(
            &mut errors,
            self.batch_body_limit >= self.body_limit,
            "batch_body_limit: at least body_limit".into(),
        );
        require(
            &mut errors,
            ["auto", "pretty", "json"].contains(&self.log_format.as_str()),
            format!(
                "log_format (FLUXCB_LOG_FORMAT): `{}`: use auto, pretty or json",
                self.log_format
            ),
        );
        if let Some(p) = &self.ca_bundle {
            require(
                &mut errors,
                p.is_file(),
                format!(
                    "ca_bundle (FLUXCB_CA_BUNDLE): {} is not a readable file",
                    p.display()
                ),
            );
        }
        let legacy_database_url = self.legacy_database_url.clone().filter(|u| !u.is_empty());
        if let Some(url) = &legacy_database_url {
            require(
                &mut errors,
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "legacy_database_url (FLUXCB_LEGACY_DATABASE_URL): must be a postgres:// URL"
                    .into(),
            );
        }
        let upstream = |name: &str, value: &Option<String>, errors: &mut Vec<String>| {
            let value = value.as_deref().filter(|v| !v.is_empty())?;
            match Url::parse(value) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
                _ => {
                    errors.push(format!(
                        "{name} (FLUXCB_{}): not an http(s) URL",
                        name.to_ascii_uppercase()
                    ));
                    None
                }
            }
        };
        let legacy_upstream = upstream("legacy_upstream", &self.legacy_upstream, &mut errors);
        let legacy_send_upstream = upstream(
            "legacy_send_upstream",
            &self.legacy_send_upstream,
            &mut errors,
        )
        .or_else(|| legacy_upstream.clone());
        let mode = self
            .migration_mode
            .parse::<MigrationMode>()
            .map_err(|e| errors.push(format!("migration_mode (FLUXCB_MIGRATION_MODE): {e}")))
            .unwrap_or_default();
        let legacy_receiver_formats = parse_receiver_formats(&self.legacy_receiver_formats)
            .unwrap_or_else(|e| {
                errors.push(format!(
                    "legacy_receiver_formats (FLUXCB_LEGACY_RECEIVER_FORMATS): {e}"
                ));
                Vec::new()
            });
        if self.cutover_percent > 100 {
            errors.push("cutover_percent (FLUXCB_CUTOVER_PERCENT): must be 0 to 100".into());
        }
        if mode != MigrationMode::Off && legacy_upstream.is_none() {
            errors.push(format!(
                "migration_mode {mode} needs legacy_upstream (FLUXCB_LEGACY_UPSTREAM)"
            ));
        }
        if mode == MigrationMode::Split && legacy_database_url.is_none() {
            errors.push(
                "migration_mode split needs legacy_database_url (FLUXCB_LEGACY_DATABASE_URL)"
                    .into(),
            );
        }
        if !errors.is_empty() {
            return Err(format!(
                "invalid configuration:\n  - {}",
                errors.join("\n  - ")
            ));
        }
        Ok(Settings {
            backend: backend.expect("checked"),
            listen: listen.expect("checked"),
            data_dir: self.data_dir.clone(),
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            signing_secret: secret.expect("checked"),
            legacy_signing_secret: self
                .legacy_signing_secret
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|s| std::sync::Arc::from(s.as_bytes())),
            legacy_database_url,
            legacy_upstream,
            legacy_send_upstream,
            migration: MigrationState {
                mode,
                cutover_percent: self.cutover_percent,
                updated_at: chrono::DateTime::UNIX_EPOCH,
            },
            legacy_receiver_formats,
            api_rate_limit: self.api_rate_limit,
            allow_private_targets: allow.expect("checked"),
            retry: RetryPolicy {
                schedule: schedule.expect("checked"),
                ..RetryPolicy::default()
            },
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms.into()),
            ca_bundle: self.ca_bundle.clone(),
            retention: retention.expect("checked"),
            idempotency_retention: idem.expect("checked"),
            max_in_flight: self.max_in_flight,
            destination_max_in_flight: self.destination_max_in_flight,
            body_limit: self.body_limit,
            batch_body_limit: self.batch_body_limit,
            sweep_interval,
            sweep_grace,
            paused_recheck,
            ordering_after_dead_letter,
            ops_events,
            ops_events_quiet,
            aws_claim_lease,
            aws,
        })
    }
}

/// `origin=format, origin=format`; an origin is scheme, host and optional port.
fn parse_receiver_formats(raw: &str) -> Result<Vec<(Destination, WireFormat)>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (origin, format) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not origin=format"))?;
            let url = Url::parse(origin.trim())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| format!("{origin:?} is not an http(s) origin"))?;
            let format: WireFormat = format.trim().parse()?;
            Ok((Destination::of(&url), format))
        })
        .collect()
}

fn require(errors: &mut Vec<String>, ok: bool, msg: String) {
    if !ok {
        errors.push(msg);
    }
}
