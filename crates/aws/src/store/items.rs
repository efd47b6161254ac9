//! Callbacks, attempts and history events to and from DynamoDB items.
use std::collections::BTreeMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, TimeZone, Utc};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::callback::{Callback, CallbackSpec, Method, Owner, Payload, WireFormat};
use fluxcb_core::event::{Event, EventKind};
use fluxcb_core::id::CallbackId;
use fluxcb_core::notify::{Kind, NotifyOn};
use fluxcb_core::ports::StoreError;
use fluxcb_core::status::Status;
use fluxcb_core::tenant::TenantId;

use super::{Item, DUE_SHARDS, MAX_QUEUE_DELAY};

pub(crate) const CALLBACK_SK: &str = "cb";

pub(crate) fn callback_pk(id: &CallbackId) -> String {
    format!("cb#{id}")
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

/// Which shard of the `due` index a callback lives in: stable per id, spread evenly.
pub(crate) fn due_shard(id: &CallbackId) -> String {
    let random = id.ulid().random();
    format!("due#{}", (random % u128::from(DUE_SHARDS)) as u32)
}

/// `due_sk` sorts by time, then id.
pub(crate) fn due_sort_key(at: DateTime<Utc>, id: &CallbackId) -> String {
    format!("{:013}#{id}", ms(at).max(0))
}

/// When the sweeper must next look at a waiting callback (the time in its `due_sk`). One whose
/// writer sends a message is looked at only if that message is overdue by `grace` (presumed
/// lost); one without a message (a long wait) when its due time comes within the queue's reach.
/// So the sweeper's query returns the callbacks that need it, not the whole healthy backlog.
pub(crate) fn sweep_at(
    due: DateTime<Utc>,
    enqueued_at: Option<DateTime<Utc>>,
    grace: chrono::TimeDelta,
) -> DateTime<Utc> {
    match enqueued_at {
        Some(sent) => due.max(sent) + grace,
        None => due - SWEEP_REACH,
    }
}

/// How far ahead of its due time the sweeper sends a waiting callback's message: a little less
/// than SQS's 15-minute delay, so that a sweep every minute never leaves one unsent.
pub(crate) const SWEEP_REACH: chrono::TimeDelta = chrono::TimeDelta::seconds(14 * 60);

pub(crate) fn tenant_status(tenant: &TenantId, status: Status) -> String {
    format!("{tenant}#{status}")
}

/// Epoch seconds at which DynamoDB's TTL may delete an item.
pub(crate) fn expiry(now: DateTime<Utc>, keep: std::time::Duration) -> i64 {
    now.timestamp() + keep.as_secs() as i64
}

/// The item of a freshly accepted callback. `enqueued` says whether its writer sends a queue
/// message right after the write (due within the queue's maximum delay); the sweeper looks
/// after the others.
pub(crate) fn callback_item(cb: &Callback, grace: chrono::TimeDelta) -> Item {
    let mut item = Item::new();
    let id = cb.id.to_string();
    item.insert("pk".into(), s(callback_pk(&cb.id)));
    item.insert("sk".into(), s(CALLBACK_SK));
    item.insert("id".into(), s(&id));
    item.insert("tenant".into(), s(cb.tenant.as_str()));
    item.insert("status".into(), s(cb.status.as_str()));
    item.insert(
        "tenant_status".into(),
        s(tenant_status(&cb.tenant, cb.status)),
    );
    item.insert("url".into(), s(cb.spec.url.as_str()));
    item.insert("method".into(), s(cb.spec.method.as_str()));
    if !cb.spec.headers.is_empty() {
        item.insert(
            "headers".into(),
            s(serde_json::to_string(&cb.spec.headers).expect("string maps serialise")),
        );
    }
    let (kind, content_type, body): (&str, Option<&str>, &[u8]) = match &cb.spec.payload {
        Payload::Json(b) => ("json", None, b),
        Payload::Raw {
            content_type,
            bytes,
        } => ("raw", Some(content_type), bytes),
        Payload::Empty => ("empty", None, &[]),
    };
    item.insert("body_kind".into(), s(kind));
    if let Some(ct) = content_type {
        item.insert("content_type".into(), s(ct));
    }
    if !body.is_empty() {
        item.insert("body".into(), AttributeValue::B(Blob::new(body.to_vec())));
    }
    if let Some(at) = cb.spec.deliver_at {
        item.insert("deliver_at".into(), n(ms(at)));
    }
    if let Some(v) = cb.spec.max_attempts {
        item.insert("max_attempts_override".into(), n(v));
    }
    if let Some(v) = cb.spec.timeout_ms {
        item.insert("timeout_override".into(), n(v));
    }
    if !cb.spec.metadata.is_empty() {
        item.insert(
            "metadata".into(),
            s(serde_json::to_string(&cb.spec.metadata).expect("string maps serialise")),
        );
    }
    if cb.spec.wire_format != WireFormat::default() {
        item.insert("wire_format".into(), s(cb.spec.wire_format.as_str()));
    }
    if let Some(id) = cb.legacy_id {
        item.insert("legacy_id".into(), n(id));
    }
    if let Some(external_id) = &cb.external_id {
        item.insert("external_id".into(), s(external_id));
    }
    if let Some(url) = &cb.url_as_given {
        item.insert("url_as_given".into(), s(url));
    }
    if let Some(code) = cb.last_status_code {
        item.insert("last_status_code".into(), n(code));
    }
    if cb.owner != Owner::Fluxcb {
        item.insert("owner".into(), s(cb.owner.as_str()));
    }
    if cb.kind != Kind::Callback {
        item.insert("kind".into(), s(cb.kind.as_str()));
    }
    if let Some(source) = cb.source_id {
        item.insert("source_id".into(), s(source.to_string()));
    }
    if let Some(url) = &cb.spec.notify_url {
        item.insert("notify_url".into(), s(url.as_str()));
    }
    if let Some(on) = cb.spec.notify_on {
        item.insert("notify_on".into(), s(on.encode()));
    }
    if let Some(key) = &cb.spec.ordering_key {
        item.insert("ordering_key".into(), s(key));
    }
    item.insert("attempts_made".into(), n(cb.attempts_made));
    item.insert("max_attempts".into(), n(cb.max_attempts));
    item.insert("attempt_budget".into(), n(cb.max_attempts));
    item.insert("timeout_ms".into(), n(cb.timeout_ms));
    item.insert("created_at".into(), n(ms(cb.created_at)));
    item.insert("updated_at".into(), n(ms(cb.updated_at)));
    item.insert("created_by".into(), s(&cb.created_by));
    if let Some(at) = cb.next_attempt_at {
        item.insert("next_attempt_at".into(), n(ms(at)));
    }
    // A mirror of a legacy row is never due here: it stays out of the `due` index.
    if let (Some(at), Owner::Fluxcb) = (cb.next_attempt_at, cb.owner) {
        item.insert("due_pk".into(), s(due_shard(&cb.id)));
        let enqueued = (at - cb.created_at <= MAX_QUEUE_DELAY).then_some(cb.created_at);
        if let Some(sent) = enqueued {
            item.insert("enqueued_at".into(), n(ms(sent)));
        }
        item.insert(
            "due_sk".into(),
            s(due_sort_key(sweep_at(at, enqueued, grace), &cb.id)),
        );
    }
    item
}

pub(crate) const POINTER_SK: &str = "legacy";
pub(crate) const GUARD_SK: &str = "external";
/// The attribute of a pointer or guard item that names its callback. Not `id` and not `tenant`,
/// so that these items stay out of the `by_tenant` index.
pub(crate) const HOLDER: &str = "callback";

/// The item that finds a callback by its legacy id (`GET /api/callbacks/<id>/`), and keeps
/// legacy ids unique across the table.
pub(crate) fn pointer_pk(legacy_id: i64) -> String {
    format!("legacy#{legacy_id}")
}

/// The item that keeps an `external_id` unique within a tenant. Long values are hashed (a
/// partition key is at most 2,048 bytes), under their own prefix so that no literal value can
/// collide with a hashed one.
pub(crate) fn guard_pk(tenant: &TenantId, external_id: &str) -> String {
    if external_id.len() <= 512 {
        format!("external#{tenant}#{external_id}")
    } else {
        format!(
            "externalh#{tenant}#{}",
            fluxcb_core::auth::hash_key(external_id)
        )
    }
}

fn pointer_item(cb: &Callback, legacy_id: i64) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(pointer_pk(legacy_id)));
    item.insert("sk".into(), s(POINTER_SK));
    item.insert(HOLDER.into(), s(cb.id.to_string()));
    item
}

fn guard_item(cb: &Callback, external_id: &str) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(guard_pk(&cb.tenant, external_id)));
    item.insert("sk".into(), s(GUARD_SK));
    item.insert(HOLDER.into(), s(cb.id.to_string()));
    item.insert("external_id".into(), s(external_id));
    if let Some(id) = cb.legacy_id {
        item.insert("holder_legacy_id".into(), n(id));
    }
    item
}

/// Everything a new callback writes, callback item first: its legacy id pointer and its
/// `external_id` guard when it has them. Written together, in one transaction.
pub(crate) fn callback_entries(cb: &Callback, grace: chrono::TimeDelta) -> Vec<Item> {
    let mut entries = vec![callback_item(cb, grace)];
    if let Some(id) = cb.legacy_id {
        entries.push(pointer_item(cb, id));
    }
    if let Some(external_id) = &cb.external_id {
        entries.push(guard_item(cb, external_id));
    }
    entries
}

/// Rough size of an item as DynamoDB counts it (attribute names plus values).
pub(crate) fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    AttributeValue::S(s) => s.len(),
                    AttributeValue::N(n) => n.len(),
                    AttributeValue::B(b) => b.as_ref().len(),
                    _ => 16,
                }
        })
        .sum()
}

fn bad(what: &str) -> StoreError {
    StoreError::Internal(format!("malformed item in the callback table: {what}"))
}

pub(crate) fn get_s<'a>(item: &'a Item, key: &str) -> Option<&'a str> {
    match item.get(key) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

pub(crate) fn get_n(item: &Item, key: &str) -> Option<i64> {
    match item.get(key) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

fn req_s<'a>(item: &'a Item, key: &str) -> Result<&'a str, StoreError> {
    get_s(item, key).ok_or_else(|| bad(key))
}

fn req_n(item: &Item, key: &str) -> Result<i64, StoreError> {
    get_n(item, key).ok_or_else(|| bad(key))
}

/// The host name of a callback item's target URL (empty when it has none).
pub(crate) fn host_of(item: &Item) -> String {
    get_s(item, "url")
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Whether a callback item passes the filter's `host` and `metadata` conditions (read from
/// the item, not from an index).
pub(crate) fn matches_host_and_tag(item: &Item, filter: &fluxcb_core::ports::ListFilter) -> bool {
    if filter.host.as_ref().is_some_and(|h| *h != host_of(item)) {
        return false;
    }
    let Some((key, value)) = &filter.metadata else {
        return true;
    };
    let metadata: BTreeMap<String, String> = get_s(item, "metadata")
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or_default();
    metadata.get(key) == Some(value)
}

/// Whether retention has expired the item (DynamoDB may not have deleted it yet).
pub(crate) fn is_expired(item: &Item, now: DateTime<Utc>) -> bool {
    get_n(item, "expires_at").is_some_and(|at| at <= now.timestamp())
}

pub(crate) fn callback_from_item(item: &Item) -> Result<Callback, StoreError> {
    let id: CallbackId = req_s(item, "id")?.parse().map_err(|_| bad("id"))?;
    let tenant = TenantId::parse(req_s(item, "tenant")?).map_err(|_| bad("tenant"))?;
    let status: Status = req_s(item, "status")?.parse().map_err(|_| bad("status"))?;
    let url = url::Url::parse(req_s(item, "url")?).map_err(|_| bad("url"))?;
    let method: Method = req_s(item, "method")?.parse().map_err(|_| bad("method"))?;
    let headers: BTreeMap<String, String> = match get_s(item, "headers") {
        Some(h) => serde_json::from_str(h).map_err(|_| bad("headers"))?,
        None => BTreeMap::new(),
    };
    let metadata: BTreeMap<String, String> = match get_s(item, "metadata") {
        Some(h) => serde_json::from_str(h).map_err(|_| bad("metadata"))?,
        None => BTreeMap::new(),
    };
    let body = match item.get("body") {
        Some(AttributeValue::B(b)) => b.as_ref().to_vec(),
        _ => Vec::new(),
    };
    let payload = match req_s(item, "body_kind")? {
        "json" => Payload::Json(body),
        "raw" => Payload::Raw {
            content_type: req_s(item, "content_type")?.to_owned(),
            bytes: body,
        },
        "empty" => Payload::Empty,
        _ => return Err(bad("body_kind")),
    };
    Ok(Callback {
        id,
        tenant,
        spec: CallbackSpec {
            url,
            method,
            headers,
            payload,
            deliver_at: get_n(item, "deliver_at").map(from_ms),
            max_attempts: get_n(item, "max_attempts_override").map(|v| v as u32),
            timeout_ms: get_n(item, "timeout_override").map(|v| v as u32),
            metadata,
            wire_format: match get_s(item, "wire_format") {
                Some(f) => f.parse().map_err(|_| bad("wire_format"))?,
                None => WireFormat::default(),
            },
            ordering_key: get_s(item, "ordering_key").map(str::to_owned),
            notify_url: get_s(item, "notify_url")
                .map(url::Url::parse)
                .transpose()
                .map_err(|_| bad("notify_url"))?,
            notify_on: get_s(item, "notify_on").map(NotifyOn::decode),
        },
        status,
        attempts_made: req_n(item, "attempts_made")? as u32,
        max_attempts: req_n(item, "max_attempts")? as u32,
        timeout_ms: req_n(item, "timeout_ms")? as u32,
        next_attempt_at: get_n(item, "next_attempt_at").map(from_ms),
        created_at: from_ms(req_n(item, "created_at")?),
        updated_at: from_ms(req_n(item, "updated_at")?),
        created_by: req_s(item, "created_by")?.to_owned(),
        last_error: get_s(item, "last_error").map(str::to_owned),
        legacy_id: get_n(item, "legacy_id"),
        external_id: get_s(item, "external_id").map(str::to_owned),
        url_as_given: get_s(item, "url_as_given").map(str::to_owned),
        last_status_code: get_n(item, "last_status_code").and_then(|c| u16::try_from(c).ok()),
        owner: get_s(item, "owner")
            .map(|o| o.parse().map_err(|_| bad("owner")))
            .transpose()?
            .unwrap_or_default(),
        kind: get_s(item, "kind")
            .map(|k| k.parse().map_err(|_| bad("kind")))
            .transpose()?
            .unwrap_or_default(),
        source_id: get_s(item, "source_id")
            .map(|id| id.parse().map_err(|_| bad("source_id")))
            .transpose()?,
    })
}

/// What an attempt item adds to the attempt itself: the state it led to.
pub(crate) struct AttemptRecord<'a> {
    pub attempt: &'a Attempt,
    pub recorded_at: DateTime<Utc>,
    pub to_status: Option<Status>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub dead_letter_reason: Option<&'static str>,
    pub expires_at: i64,
}

pub(crate) fn attempt_item(id: &CallbackId, r: &AttemptRecord<'_>) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(callback_pk(id)));
    item.insert(
        "sk".into(),
        s(format!("at#{:05}#{}", r.attempt.number, ulid::Ulid::new())),
    );
    item.insert(
        "attempt".into(),
        s(serde_json::to_string(r.attempt).expect("attempts serialise")),
    );
    item.insert("recorded_at".into(), n(ms(r.recorded_at)));
    if let Some(to) = r.to_status {
        item.insert("to_status".into(), s(to.as_str()));
    }
    if let Some(at) = r.next_attempt_at {
        item.insert("next_attempt_at".into(), n(ms(at)));
    }
    if let Some(reason) = r.dead_letter_reason {
        item.insert("dead_letter_reason".into(), s(reason));
    }
    item.insert("expires_at".into(), n(r.expires_at));
    item
}

pub(crate) fn attempt_from_item(item: &Item) -> Result<Attempt, StoreError> {
    serde_json::from_str(req_s(item, "attempt")?).map_err(|_| bad("attempt"))
}

/// The history event an attempt item stands for.
pub(crate) fn attempt_event(item: &Item) -> Result<Event, StoreError> {
    let attempt = attempt_from_item(item)?;
    Ok(Event {
        seq: 0,
        at: from_ms(req_n(item, "recorded_at")?),
        kind: EventKind::Attempted,
        actor: None,
        from_status: Some(Status::Delivering.as_str().to_owned()),
        to_status: get_s(item, "to_status").map(str::to_owned),
        detail: serde_json::json!({
            "number": attempt.number,
            "status_code": attempt.status_code,
            "error": attempt.error.map(|e| e.as_str()),
            "duration_ms": attempt.duration_ms,
            "next_attempt_at": get_n(item, "next_attempt_at").map(from_ms),
            "dead_letter_reason": get_s(item, "dead_letter_reason"),
        }),
    })
}

pub(crate) struct NewEvent<'a> {
    pub kind: EventKind,
    pub actor: Option<&'a str>,
    pub from: Option<Status>,
    pub to: Option<Status>,
}

pub(crate) fn event_item(
    id: &CallbackId,
    at: DateTime<Utc>,
    e: &NewEvent<'_>,
    expires_at: i64,
) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(callback_pk(id)));
    item.insert(
        "sk".into(),
        s(format!(
            "ev#{}",
            ulid::Ulid::from_parts(ms(at) as u64, rand::random())
        )),
    );
    item.insert("at".into(), n(ms(at)));
    item.insert("kind".into(), s(e.kind.as_str()));
    if let Some(actor) = e.actor {
        item.insert("actor".into(), s(actor));
    }
    if let Some(from) = e.from {
        item.insert("from_status".into(), s(from.as_str()));
    }
    if let Some(to) = e.to {
        item.insert("to_status".into(), s(to.as_str()));
    }
    item.insert("expires_at".into(), n(expires_at));
    item
}

fn event_kind(text: &str) -> Option<EventKind> {
    [
        EventKind::Created,
        EventKind::Attempted,
        EventKind::Recovered,
        EventKind::Cancelled,
        EventKind::Retried,
        EventKind::Redriven,
        EventKind::SentNow,
        EventKind::Imported,
        EventKind::Shadowed,
        EventKind::HandedBack,
    ]
    .into_iter()
    .find(|k| k.as_str() == text)
}

pub(crate) fn event_from_item(item: &Item) -> Result<Event, StoreError> {
    Ok(Event {
        seq: 0,
        at: from_ms(req_n(item, "at")?),
        kind: event_kind(req_s(item, "kind")?).ok_or_else(|| bad("kind"))?,
        actor: get_s(item, "actor").map(str::to_owned),
        from_status: get_s(item, "from_status").map(str::to_owned),
        to_status: get_s(item, "to_status").map(str::to_owned),
        detail: get_s(item, "detail")
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_else(|| serde_json::json!({})),
    })
}

/// The audit trail of a callback from its partition: creation, attempts and actions in time
/// order (the same shape as the embedded store's).
pub(crate) fn history(cb: &Callback, partition: &[Item]) -> Result<Vec<Event>, StoreError> {
    let initial = match cb.spec.deliver_at {
        Some(at) if at > cb.created_at => Status::Scheduled,
        _ => Status::Pending,
    };
    let mut events = vec![Event {
        seq: 0,
        at: cb.created_at,
        kind: EventKind::Created,
        actor: Some(cb.created_by.clone()),
        from_status: None,
        to_status: Some(initial.as_str().to_owned()),
        detail: serde_json::json!({ "tenant": cb.tenant.as_str() }),
    }];
    for item in partition {
        match get_s(item, "sk") {
            Some(sk) if sk.starts_with("at#") => events.push(attempt_event(item)?),
            Some(sk) if sk.starts_with("ev#") => events.push(event_from_item(item)?),
            _ => {}
        }
    }
    events.sort_by_key(|e| e.at);
    for (i, e) in events.iter_mut().enumerate() {
        e.seq = i as i64 + 1;
    }
    Ok(events)
}
