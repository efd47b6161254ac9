//! The examples at the end of each command's `--help`. docs/cli.md has the same commands with
//! their output; keep the two in step.

/// The exit codes, in the top-level help and docs/cli.md.
pub const TOP: &str = "\
Exit codes (every command):
  0  success
  1  error: bad flag or value, a 4xx answer other than 404/409/429 (e.g. a wrong API key), or
     a failure no other code names
  2  not found (404; an unknown key to revoke)
  3  conflict or wrong state (409: cancel a delivered callback, retry one that has not failed;
     a key name taken; a data directory in use)
  4  unavailable: the server cannot be reached, or answered 5xx or 429; try again later
  5  the check failed: migrate compare over its threshold, migrate import skipped rows

Commands that print a result take --output human|json. With json, stdout holds exactly one
JSON document: the result, or {\"error\": {\"exit_code\", \"kind\", \"message\", \"status\",
\"problem\"}}. Messages for people go to stderr. See docs/cli.md.";

pub const SERVE: &str = "\
Examples:
  fluxcb serve                                   127.0.0.1:8080, store in ./fluxcb-data
  fluxcb serve --listen 0.0.0.0:8080 --data-dir /var/lib/fluxcb
  FLUXCB_ALLOW_PRIVATE_TARGETS=127.0.0.0/8 fluxcb serve   deliver to receivers on this machine
  fluxcb serve --backend aws                     on the DynamoDB table and SQS queues named by
                                                 FLUXCB_DYNAMODB_TABLE, FLUXCB_SQS_QUEUE_URL,
                                                 FLUXCB_SQS_DLQ_URL

The first start on a fresh store prints an admin API key once, on stdout. Exits 0 after
Ctrl-C or SIGTERM (deliveries in flight finish first), 1 when it cannot start, 3 when another
fluxcb uses the data directory.";

pub const SEND: &str = "\
Examples:
  fluxcb send https://example.com/hooks/orders --payload '{\"order\": 42}'
  fluxcb send https://example.com/hooks/orders --payload '{\"order\": 42}' \\
      --idempotency-key order-42 --metadata team=shop --max-attempts 5
  fluxcb send https://example.com/hooks/raw --body 'a=1&b=2' \\
      --content-type application/x-www-form-urlencoded --header 'X-Source: billing'
  fluxcb send https://example.com/hooks/later --payload '{}' --deliver-at 2030-01-01T09:00:00Z
  id=$(fluxcb send https://example.com/h --payload '{}' --output json | jq -r .id)

The server and key come from --url and --api-key, or FLUXCB_URL and FLUXCB_API_KEY.";

pub const GET: &str = "\
Examples:
  fluxcb get cb_01JB6Z4M3Q9W8X7V6T5S4R3P2N          the callback, then its attempts
  fluxcb get cb_01JB6Z4M3Q9W8X7V6T5S4R3P2N --output json | jq '.attempts[-1]'

Exits 2 when there is no such callback (or it belongs to another tenant).";

pub const LIST: &str = "\
Examples:
  fluxcb list                                     the 50 newest callbacks
  fluxcb list --status failed --host example.com  dead letters of one receiver
  fluxcb list --metadata team=shop --limit 200
  fluxcb list --cursor cb_01JB6Z4M3Q9W8X7V6T5S4R3P2N   the next page (the cursor is printed
                                                   on stderr under the table)
  fluxcb list --status pending --output json | jq -r '.data[].id'";

pub const CANCEL: &str = "\
Examples:
  fluxcb cancel cb_01JB6Z4M3Q9W8X7V6T5S4R3P2N

Exits 2 when there is no such callback, 3 when it is no longer scheduled or pending.";

pub const RETRY: &str = "\
Examples:
  fluxcb retry cb_01JB6Z4M3Q9W8X7V6T5S4R3P2N      a dead letter, with a fresh attempt budget

Exits 2 when there is no such callback, 3 when it has not failed.";

pub const REDRIVE: &str = "\
Examples:
  fluxcb redrive --dry-run                        how many dead letters would move
  fluxcb redrive                                  move every dead letter back to the queue
  fluxcb redrive --host example.com --metadata team=shop
  fluxcb redrive --tenant acme --batch 100        an admin key, one tenant, 100 per request
  fluxcb redrive --output json                    {\"moved\": N} ({\"moved\": 0, \"matched\": N}
                                                  with --dry-run)

It counts the matches first, then moves them --batch at a time, at most that many: a progress
bar on a terminal, a line every 5 s otherwise (stderr). Stopped halfway, the rest are still
dead letters; run it again.";

pub const KEYS: &str = "\
Examples:
  fluxcb keys create --tenant acme                a tenant key, printed once
  fluxcb keys list
  fluxcb keys revoke acme-20260101120000";

pub const KEYS_CREATE: &str = "\
Examples:
  fluxcb keys create --tenant acme --name acme-billing
  fluxcb keys create --tenant ops --role admin --data-dir /var/lib/fluxcb
  key=$(fluxcb keys create --tenant acme)           stdout holds only the key
  fluxcb keys create --tenant acme --output json | jq -r .key

Exits 3 when a key with that name exists.";

pub const KEYS_LIST: &str = "\
Examples:
  fluxcb keys list
  fluxcb keys list --output json | jq -r '.[] | select(.revoked_at == null) | .name'";

pub const KEYS_REVOKE: &str = "\
Examples:
  fluxcb keys revoke acme-billing                 by name
  fluxcb keys revoke key_01JB6Z4M3Q9W8X7V6T5S4R3P2N  by id

Running servers stop accepting the key within 5 seconds. Exits 2 when no live key has that id
or name.";

pub const SECRETS: &str = "\
Examples:
  fluxcb secrets show --tenant acme
  fluxcb secrets rotate --tenant acme --grace 48h";

pub const SECRETS_ROTATE: &str = "\
Examples:
  fluxcb secrets rotate                           tenant default; old secrets sign for 24h more
  fluxcb secrets rotate --tenant acme --grace 1h
  fluxcb secrets rotate --tenant acme --output json | jq -r .secret

stdout holds only the new secret (whsec_...); give it to the receivers before the grace
period ends.";

pub const SECRETS_SHOW: &str = "\
Examples:
  fluxcb secrets show --tenant acme               one secret a line, newest first
  fluxcb secrets show --tenant acme --output json";

pub const BACKUP: &str = "\
Examples:
  fluxcb backup --out /backups/fluxcb-$(date +%F).db
  fluxcb backup --data-dir /var/lib/fluxcb --out /backups/fluxcb.db

Safe while serve runs. Exits 2 when the data directory has no store, 3 when --out exists.";

pub const RESTORE: &str = "\
Examples:
  fluxcb restore --from /backups/fluxcb-2026-01-01.db
  fluxcb restore --data-dir /var/lib/fluxcb --from /backups/fluxcb.db

Exits 3 while a server uses the data directory: stop it first.";

pub const MIGRATE: &str = "\
Examples:
  fluxcb migrate import --legacy-db postgres://app@db:5432/callbacks --dry-run
  fluxcb migrate compare --legacy-db postgres://app@db:5432/callbacks --threshold 0
  fluxcb migrate export --legacy-db postgres://app@db:5432/callbacks

The runbook (which command when, and the way back) is docs/migration.md.";

pub const MIGRATE_IMPORT: &str = "\
Examples:
  fluxcb migrate import --legacy-db postgres://app@db:5432/callbacks --dry-run
  fluxcb migrate import --legacy-db postgres://app@db:5432/callbacks
  fluxcb migrate import --take-ownership --after 120000   after stopping the legacy worker,
                                                          resuming where a run stopped
  fluxcb migrate import --backend aws --output json > import-report.json

Exits 4 when the legacy database cannot be reached, 5 when rows were skipped.";

pub const MIGRATE_COMPARE: &str = "\
Examples:
  fluxcb migrate compare --legacy-db postgres://app@db:5432/callbacks
  fluxcb migrate compare --threshold 0 --output json > compare-$(date +%F).json
  fluxcb migrate compare --legacy-secret \"$LEGACY_SIGNING_SECRET\" --samples 5

Exits 5 when the differences exceed --threshold (the report is still printed), 4 when the
legacy database cannot be reached.";

pub const MIGRATE_EXPORT: &str = "\
Examples:
  fluxcb migrate export --legacy-db postgres://app@db:5432/callbacks
  fluxcb migrate export --wait 120 --output json

Then set cutover_percent to 0 (PUT /v1/admin/migration) and start the legacy worker.";

pub const AWS: &str = "\
Examples:
  eval \"$(fluxcb aws bootstrap --prefix dev | sed 's/^/export /')\"
  fluxcb aws redrive-dlq --max 1000";

pub const AWS_BOOTSTRAP: &str = "\
Examples:
  AWS_ENDPOINT_URL=http://127.0.0.1:5000 fluxcb aws bootstrap          against an emulator
  eval \"$(fluxcb aws bootstrap --prefix dev | sed 's/^/export /')\"; fluxcb serve --backend aws";

pub const AWS_REDRIVE_DLQ: &str = "\
Examples:
  fluxcb aws redrive-dlq
  fluxcb aws redrive-dlq --max 1000";
