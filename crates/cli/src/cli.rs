//! Command-line grammar. The examples each `--help` ends with are in [`crate::help`].
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::help;
use crate::output::Output;

#[derive(Parser)]
#[command(
    name = "fluxcb",
    version,
    about = "Callback (webhook) delivery you can trust",
    after_help = help::TOP
)]
pub struct Cli {
    /// Config file (TOML). Default: ./fluxcb.toml when present.
    #[arg(long, env = "FLUXCB_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log format: auto (pretty on a terminal, JSON otherwise), pretty or json.
    #[arg(long, global = true)]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone, Default)]
pub struct StoreArgs {
    /// Directory of the embedded store [env: FLUXCB_DATA_DIR] [default: ./fluxcb-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Where the migrate commands find fluxcb's records: the embedded store, or the AWS backend's
/// table (the same settings as `serve --backend aws`).
#[derive(Args, Clone, Default)]
pub struct MigrateStoreArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// sqlite (default) or aws: the AWS backend's table, named by FLUXCB_DYNAMODB_TABLE,
    /// FLUXCB_SQS_QUEUE_URL and FLUXCB_SQS_DLQ_URL [env: FLUXCB_BACKEND]
    #[arg(long)]
    pub backend: Option<String>,
}

/// `--output`, on every command that prints a result.
#[derive(Args, Clone, Copy, Default)]
pub struct OutputArgs {
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The fluxcb server.
    #[arg(
        long = "url",
        env = "FLUXCB_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// API key (Bearer).
    #[arg(long, env = "FLUXCB_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// See it work: the server on a fresh embedded store, local receivers that fail some
    /// callbacks on purpose, and a stream of sample callbacks; prints the console URL and an
    /// API key to log in with.
    #[command(after_help = DEMO_EXAMPLES)]
    Demo(DemoArgs),
    /// Run the API, the delivery workers and maintenance (on the embedded store, or with
    /// `--backend aws` on DynamoDB and SQS: container mode).
    #[command(after_help = help::SERVE)]
    Serve {
        /// Address to listen on [env: FLUXCB_LISTEN] [default: 127.0.0.1:8080]
        #[arg(long)]
        listen: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        /// sqlite (default) or aws [env: FLUXCB_BACKEND]
        #[arg(long)]
        backend: Option<String>,
        /// Export spans over OTLP/HTTP to this collector, e.g. http://127.0.0.1:4318
        /// [env: FLUXCB_OTLP_ENDPOINT, or the standard OTEL_EXPORTER_OTLP_ENDPOINT]
        #[arg(long)]
        otlp_endpoint: Option<String>,
    },
    /// Manage API keys (opens the store directly).
    #[command(subcommand, after_help = help::KEYS)]
    Keys(KeysCommand),
    /// Move from the legacy services: import their table, compare, hand back (see
    /// docs/migration.md).
    #[command(subcommand, after_help = help::MIGRATE)]
    Migrate(MigrateCommand),
    /// The AWS backend's resources.
    #[cfg(feature = "aws")]
    #[command(subcommand, after_help = help::AWS)]
    Aws(AwsCommand),
    /// Manage signing secrets (opens the store directly).
    #[command(subcommand, after_help = help::SECRETS)]
    Secrets(SecretsCommand),
    /// Write a consistent copy of the embedded store while it runs.
    #[command(after_help = help::BACKUP)]
    Backup {
        #[command(flatten)]
        store: StoreArgs,
        /// Destination file (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Replace the store with a backup (fluxcb must be stopped). The replaced store is kept
    /// beside it as fluxcb.db.before-restore-<time>.
    #[command(after_help = help::RESTORE)]
    Restore {
        #[command(flatten)]
        store: StoreArgs,
        /// The backup file written by `fluxcb backup`.
        #[arg(long)]
        from: PathBuf,
    },
    /// Create a callback.
    #[command(after_help = help::SEND)]
    Send(SendArgs),
    /// Show one callback with its attempts.
    #[command(after_help = help::GET)]
    Get {
        /// The callback's id (cb_...).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List callbacks, newest first (one page; --cursor for the next).
    #[command(after_help = help::LIST)]
    List {
        /// scheduled, pending, delivering, delivered, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Host name of the target URL.
        #[arg(long)]
        host: Option<String>,
        /// key=value
        #[arg(long)]
        metadata: Option<String>,
        /// The previous page's next cursor.
        #[arg(long)]
        cursor: Option<String>,
        /// Callbacks per page (1-500, default 50).
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Cancel a scheduled or pending callback.
    #[command(after_help = help::CANCEL)]
    Cancel {
        /// The callback's id (cb_...).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Send a dead-lettered callback back to the queue.
    #[command(after_help = help::RETRY)]
    Retry {
        /// The callback's id (cb_...).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Send every dead letter matching the filter back to the queue, in steps of --batch
    /// (progress on stderr); --dry-run only counts them.
    #[command(after_help = help::REDRIVE)]
    Redrive(RedriveArgs),
}

#[derive(Args)]
pub struct RedriveArgs {
    /// Host name of the target URL.
    #[arg(long)]
    pub host: Option<String>,
    /// key=value
    #[arg(long)]
    pub metadata: Option<String>,
    /// Admin keys only: one tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Move nothing; print how many dead letters would move.
    #[arg(long)]
    pub dry_run: bool,
    /// Dead letters moved per request (1-10000).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl Command {
    /// The `--output` the command was given (human for commands without one), so that a
    /// failure can be reported the way its result would have been.
    pub fn output(&self) -> Output {
        match self {
            Command::Send(SendArgs { output, .. })
            | Command::Get { output, .. }
            | Command::List { output, .. }
            | Command::Cancel { output, .. }
            | Command::Retry { output, .. }
            | Command::Redrive(RedriveArgs { output, .. })
            | Command::Keys(
                KeysCommand::Create { output, .. }
                | KeysCommand::List { output, .. }
                | KeysCommand::Revoke { output, .. },
            )
            | Command::Secrets(
                SecretsCommand::Rotate { output, .. } | SecretsCommand::Show { output, .. },
            )
            | Command::Migrate(
                MigrateCommand::Import { output, .. }
                | MigrateCommand::Compare { output, .. }
                | MigrateCommand::Export { output, .. },
            ) => output.output,
            _ => Output::Human,
        }
    }
}

const DEMO_EXAMPLES: &str = "\
Examples:
  fluxcb demo                          10 callbacks a second until Ctrl-C; console on port 8080
  fluxcb demo --rate 50 --for 5m       50 a second for five minutes, then keep serving
  fluxcb demo --port 0 --count 500     any free port; stop sending after 500 callbacks
  fluxcb demo --data-dir ./demo-data   keep the store (the next run adds to it)

The demo reads no fluxcb.toml and no FLUXCB_* variables: it has its own settings (retries after
1s, 2s, 4s; 4 attempts; deliveries allowed to its own receivers' addresses only).";

#[derive(Args)]
pub struct DemoArgs {
    /// Port of the server (API and console) on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sample callbacks sent per second (1-1000).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: u32,
    /// Stop sending after this long (e.g. 90s, 5m); the server keeps serving until Ctrl-C.
    /// Default: send until Ctrl-C.
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Stop sending after this many callbacks.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Keep the store in this directory instead of a fresh temporary one (removed at the end).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct SendArgs {
    /// The URL to call.
    pub target: String,
    /// JSON payload.
    #[arg(long, conflicts_with = "body")]
    pub payload: Option<String>,
    /// Raw body (with --content-type).
    #[arg(long)]
    pub body: Option<String>,
    #[arg(long)]
    pub content_type: Option<String>,
    #[arg(long)]
    pub method: Option<String>,
    /// Name:Value, repeatable.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// RFC 3339 time of the first attempt.
    #[arg(long)]
    pub deliver_at: Option<String>,
    #[arg(long)]
    pub max_attempts: Option<u32>,
    #[arg(long)]
    pub timeout_ms: Option<u32>,
    /// key=value, repeatable.
    #[arg(long = "metadata")]
    pub metadata: Vec<String>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Subcommand)]
pub enum MigrateCommand {
    /// Copy the legacy table into fluxcb: mirrors that legacy keeps sending, or with
    /// --take-ownership (after the legacy worker is stopped) callbacks fluxcb delivers; and the
    /// legacy API tokens, as keys of tenant `legacy`. Idempotent; streams in id order. Exits
    /// with 5 when it had to skip rows (the report lists them).
    #[command(verbatim_doc_comment, after_help = help::MIGRATE_IMPORT)]
    Import {
        /// The legacy PostgreSQL database [env: FLUXCB_LEGACY_DATABASE_URL]
        #[arg(long, env = "FLUXCB_LEGACY_DATABASE_URL")]
        legacy_db: String,
        /// Make fluxcb the owner: unfinished rows become due here. Stop the legacy worker first.
        #[arg(long)]
        take_ownership: bool,
        /// Read and check every row, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rows per read and per store write.
        #[arg(long, default_value_t = 500)]
        batch: u32,
        /// Continue after this legacy id (what a stopped import printed).
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        store: MigrateStoreArgs,
    },
    /// Reconcile the legacy table with fluxcb's records: missing and extra callbacks, field
    /// mismatches, the request fluxcb would send against the one legacy would (URL, method,
    /// headers, body, signature), schedule drift, outcomes, and receivers that would behave
    /// differently (addresses fluxcb refuses, redirects, non-http schemes). Exits with 5 when
    /// the differences exceed --threshold, so it can gate a cutover. Read-only on both sides.
    #[command(verbatim_doc_comment, after_help = help::MIGRATE_COMPARE)]
    Compare {
        /// The legacy PostgreSQL database [env: FLUXCB_LEGACY_DATABASE_URL]
        #[arg(long, env = "FLUXCB_LEGACY_DATABASE_URL")]
        legacy_db: String,
        /// The legacy shared signing secret, to compare signatures; default: the configured
        /// legacy_signing_secret (FLUXCB_LEGACY_SIGNING_SECRET). Without one, signatures are
        /// not compared.
        #[arg(long)]
        legacy_secret: Option<String>,
        /// Differences allowed before the exit code is 5.
        #[arg(long, default_value_t = 0)]
        threshold: u64,
        /// Examples shown per category.
        #[arg(long, default_value_t = 20)]
        samples: usize,
        /// Legacy rows per read.
        #[arg(long, default_value_t = 500)]
        batch: u32,
        /// Seconds to wait for each receiver host name to resolve.
        #[arg(long, default_value_t = 2.0)]
        resolve_timeout: f64,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        store: MigrateStoreArgs,
    },
    /// The rollback: hand every unfinished callback fluxcb owns back to the legacy table
    /// (fenced first, in-flight attempts waited for, written with their ids, schedule and
    /// attempts; the legacy sequence moved past every fluxcb id). Then set cutover_percent to 0
    /// and start the legacy worker again. Idempotent: rerun it after a failure.
    #[command(verbatim_doc_comment, after_help = help::MIGRATE_EXPORT)]
    Export {
        /// The legacy PostgreSQL database [env: FLUXCB_LEGACY_DATABASE_URL]
        #[arg(long, env = "FLUXCB_LEGACY_DATABASE_URL")]
        legacy_db: String,
        /// How long to wait for attempts in flight to finish, in seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        store: MigrateStoreArgs,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once (the key alone on stdout).
    #[command(after_help = help::KEYS_CREATE)]
    Create {
        /// The tenant the key acts for (a tenant key sees only this tenant's callbacks).
        #[arg(long)]
        tenant: String,
        /// A label, unique among keys. Default: <tenant>-<time>.
        #[arg(long)]
        name: Option<String>,
        /// tenant or admin.
        #[arg(long, default_value = "tenant")]
        role: String,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List every key, revoked ones included.
    #[command(after_help = help::KEYS_LIST)]
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke by id or name.
    #[command(after_help = help::KEYS_REVOKE)]
    Revoke {
        /// The key's id or name.
        key: String,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Add a new signing secret; the current ones keep signing during the grace period.
    #[command(after_help = help::SECRETS_ROTATE)]
    Rotate {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// How long the previous secrets keep signing (e.g. 24h).
        #[arg(long, default_value = "24h")]
        grace: String,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print the active signing secrets of a tenant, newest first.
    #[command(after_help = help::SECRETS_SHOW)]
    Show {
        #[arg(long, default_value = "default")]
        tenant: String,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[cfg(feature = "aws")]
#[derive(Subcommand)]
pub enum AwsCommand {
    /// Create the callback table and the queues with the template's settings (for an emulator
    /// or a sandbox account; uses the standard AWS environment, including AWS_ENDPOINT_URL),
    /// and print FLUXCB_DYNAMODB_TABLE, FLUXCB_SQS_QUEUE_URL and FLUXCB_SQS_DLQ_URL.
    #[command(after_help = help::AWS_BOOTSTRAP)]
    Bootstrap {
        /// Prefix of the resource names: <prefix>-callbacks, <prefix>-work, <prefix>-dead-letters.
        #[arg(long, default_value = "fluxcb")]
        prefix: String,
    },
    /// Move messages from the SQS dead letter queue back to the work queue (those that still
    /// cannot be decoded stay). Reads FLUXCB_SQS_QUEUE_URL and FLUXCB_SQS_DLQ_URL.
    #[command(after_help = help::AWS_REDRIVE_DLQ)]
    RedriveDlq {
        /// At most this many messages.
        #[arg(long, default_value_t = 10_000)]
        max: usize,
    },
}
