//! `fluxcb migrate import` on DynamoDB (moto): the same outcomes as the embedded store. Mirrors
//! are inserted, refreshed or left unchanged, are never due (not in the `due` index, never
//! claimed) and refuse operator actions; a row taken over becomes due and the sweeper finds it;
//! what fluxcb owns is left alone; an `external_id` another callback holds is skipped; the
//! legacy id sequence only moves forward.
mod support;

use chrono::{Duration, Utc};
use fluxcb_aws::store::SweepKind;
use fluxcb_core::callback::Owner;
use fluxcb_core::ports::{
    ActionResult, CallbackStore, ImportOutcome, LegacyListFilter, ListFilter,
};
use fluxcb_core::status::Status;
use fluxcb_core::tenant::Scope;
use support::{imported_row, ingest, legacy_callback, scope, store, tenant};

#[tokio::test]
async fn import_inserts_refreshes_takes_over_and_leaves_what_fluxcb_owns() {
    let Some(store) = store().await else { return };
    let statuses = [
        Status::Pending,
        Status::Delivering,
        Status::Delivered,
        Status::Failed,
        Status::Cancelled,
    ];
    // 150 mirrors: more than one segment, several transactions each.
    let mut rows: Vec<_> = (1..=150)
        .map(|i| {
            let mut row = imported_row(i, statuses[i as usize % 5], Owner::Legacy);
            row.external_id = (i % 2 == 0).then(|| format!("ext-{i}"));
            row
        })
        .collect();
    let outcomes = store.import_legacy(rows.clone()).await.unwrap();
    assert!(
        outcomes.iter().all(|o| *o == ImportOutcome::Inserted),
        "{outcomes:?}"
    );

    // Mirrors are never due: the `due` index (which counts by status) has none of them, and the
    // sweeper finds nothing to send even a day from now.
    assert!(store.count_by_status().await.unwrap().is_empty());
    assert!(store
        .sweep_candidates(Utc::now() + Duration::days(1), 1_000)
        .await
        .unwrap()
        .is_empty());
    let legacy = scope("legacy");
    let mirror = store
        .get_by_legacy_id(&legacy, 5)
        .await
        .unwrap()
        .expect("imported")
        .callback;
    assert_eq!(mirror.owner, Owner::Legacy);
    assert!(store
        .external_id_exists(&tenant("legacy"), "ext-6")
        .await
        .unwrap());

    // Imported again unchanged; a row legacy has worked on meanwhile is refreshed.
    assert!(store
        .import_legacy(rows[..20].to_vec())
        .await
        .unwrap()
        .iter()
        .all(|o| *o == ImportOutcome::Unchanged));
    rows[2].attempts_made = 2;
    rows[2].last_status_code = Some(503);
    rows[2].updated_at = Utc::now();
    let outcomes = store.import_legacy(rows[..4].to_vec()).await.unwrap();
    assert_eq!(
        outcomes,
        [
            ImportOutcome::Unchanged,
            ImportOutcome::Unchanged,
            ImportOutcome::Updated,
            ImportOutcome::Unchanged
        ]
    );
    let refreshed = store.get_by_legacy_id(&legacy, 3).await.unwrap().unwrap();
    assert_eq!(refreshed.callback.attempts_made, 2);
    assert_eq!(refreshed.callback.last_status_code, Some(503));

    // Operator actions refuse mirrors; claims skip them; a redrive leaves them to legacy.
    let pending_mirror = store
        .get_by_legacy_id(&legacy, 5)
        .await
        .unwrap()
        .unwrap()
        .callback;
    assert_eq!(pending_mirror.status, Status::Pending);
    let failed_mirror = store
        .get_by_legacy_id(&legacy, 3)
        .await
        .unwrap()
        .unwrap()
        .callback;
    assert_eq!(failed_mirror.status, Status::Failed);
    for result in [
        store
            .cancel(&legacy, &pending_mirror.id, "op")
            .await
            .unwrap(),
        store.retry(&legacy, &failed_mirror.id, "op").await.unwrap(),
        store
            .claim_now(&legacy, &pending_mirror.id, "op", Utc::now(), Utc::now())
            .await
            .unwrap(),
    ] {
        assert!(matches!(result, ActionResult::OwnedByLegacy), "{result:?}");
    }
    assert!(store
        .claim_in(&pending_mirror.id, None, Utc::now(), Utc::now())
        .await
        .unwrap()
        .is_none());
    let mine = legacy_callback("legacy", 500, None);
    ingest(&store, vec![mine.clone()]).await.unwrap();
    store
        .claim_in(
            &mine.id,
            None,
            Utc::now(),
            Utc::now() + Duration::minutes(1),
        )
        .await
        .unwrap()
        .expect("due");
    store
        .record_attempt(
            &mine.id,
            fluxcb_core::attempt::Attempt {
                number: 1,
                started_at: Utc::now(),
                duration_ms: 1,
                status_code: Some(410),
                error: None,
                error_detail: None,
                response_headers: Default::default(),
                response_body: None,
            },
            fluxcb_core::retry::Decision::DeadLetter(fluxcb_core::retry::DeadLetterReason::Gone),
            Utc::now(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .redrive(&legacy, &ListFilter::default(), "op", None)
            .await
            .unwrap(),
        1,
        "only fluxcb's own dead letter is redriven"
    );
    assert_eq!(
        store
            .get_by_legacy_id(&legacy, 3)
            .await
            .unwrap()
            .unwrap()
            .callback
            .status,
        Status::Failed
    );

    // Taken over: fluxcb's now, due, found by the sweeper without a queue message, claimable.
    // (Its row converts to the same legacy id; the callback keeps the id it was imported with.)
    let taken = imported_row(5, Status::Pending, Owner::Fluxcb);
    let outcomes = store.import_legacy(vec![taken.clone()]).await.unwrap();
    assert_eq!(outcomes, [ImportOutcome::Updated]);
    let now = Utc::now();
    let swept = store.sweep_candidates(now, 100).await.unwrap();
    assert!(
        swept
            .iter()
            .any(|c| c.id == pending_mirror.id && c.kind == SweepKind::Enqueue),
        "{swept:?}"
    );
    let claimed = store
        .claim_in(
            &pending_mirror.id,
            Some(&tenant("legacy")),
            now,
            now + Duration::minutes(1),
        )
        .await
        .unwrap()
        .expect("a taken-over row is claimable");
    assert_eq!(claimed.owner, Owner::Fluxcb);
    // Listings can keep to one side: 149 mirrors, and fluxcb's own (the taken-over row and
    // the dead letter redriven above).
    let owned = |owner| LegacyListFilter {
        owner: Some(owner),
        ..LegacyListFilter::default()
    };
    let mirrors = store
        .list_legacy(&legacy, &owned(Owner::Legacy), 0, 3)
        .await
        .unwrap();
    assert_eq!(mirrors.count, 149);
    assert_eq!(
        mirrors
            .items
            .iter()
            .map(|c| c.legacy_id.unwrap())
            .collect::<Vec<_>>(),
        [150, 149, 148]
    );
    let ours = store
        .list_legacy(&legacy, &owned(Owner::Fluxcb), 0, 50)
        .await
        .unwrap();
    assert_eq!(ours.count, 2);
    assert_eq!(
        ours.items
            .iter()
            .map(|c| c.legacy_id.unwrap())
            .collect::<Vec<_>>(),
        [500, 5]
    );
    let waiting_mirrors = store
        .list_legacy(
            &legacy,
            &LegacyListFilter {
                statuses: Some(vec![Status::Scheduled, Status::Pending]),
                owner: Some(Owner::Legacy),
                ..LegacyListFilter::default()
            },
            0,
            0,
        )
        .await
        .unwrap();
    assert_eq!(waiting_mirrors.count, 29, "ids 10, 15, .. 150 but 5");
    assert!(waiting_mirrors.items.is_empty());

    // From now on the legacy copy is stale.
    assert_eq!(
        store.import_legacy(vec![rows[4].clone()]).await.unwrap(),
        [ImportOutcome::OwnedHere]
    );
}

#[tokio::test]
async fn import_skips_what_it_cannot_take_and_moves_the_sequence_forward() {
    let Some(store) = store().await else { return };
    // An external_id held by a callback created through /v1 (no legacy id) and by a callback
    // created through the legacy API.
    let mut through_v1 = legacy_callback("legacy", 1, Some("taken-v1"));
    through_v1.legacy_id = None;
    ingest(&store, vec![through_v1]).await.unwrap();
    ingest(
        &store,
        vec![legacy_callback("legacy", 900, Some("taken-api"))],
    )
    .await
    .unwrap();

    let mut a = imported_row(10, Status::Pending, Owner::Legacy);
    a.external_id = Some("taken-v1".into());
    let mut b = imported_row(11, Status::Pending, Owner::Legacy);
    b.external_id = Some("taken-api".into());
    let mut c = imported_row(12, Status::Pending, Owner::Legacy);
    c.legacy_id = None;
    // The same row twice in one batch: the second sees the first.
    let d = imported_row(13, Status::Delivered, Owner::Legacy);
    let mut e = imported_row(14, Status::Pending, Owner::Legacy);
    e.external_id = Some("fresh".into());
    let outcomes = store
        .import_legacy(vec![a, b, c, d.clone(), d, e])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            ImportOutcome::Skipped(
                "external_id \"taken-v1\" already belongs to a callback created through /v1".into()
            ),
            ImportOutcome::Skipped(
                "external_id \"taken-api\" already belongs to callback 900".into()
            ),
            ImportOutcome::Skipped("no legacy id".into()),
            ImportOutcome::Inserted,
            ImportOutcome::Unchanged,
            ImportOutcome::Inserted,
        ]
    );
    assert!(store
        .get_by_legacy_id(&Scope::All, 10)
        .await
        .unwrap()
        .is_none());

    // The sequence moves past what was imported, and never back.
    store.advance_legacy_ids_past(1_000).await.unwrap();
    assert_eq!(store.allocate_legacy_ids(1).await.unwrap(), 1_001);
    store.advance_legacy_ids_past(20).await.unwrap();
    assert_eq!(store.allocate_legacy_ids(2).await.unwrap(), 1_002);
    let fresh = support::store().await.unwrap();
    fresh
        .import_legacy(vec![imported_row(77, Status::Delivered, Owner::Legacy)])
        .await
        .unwrap();
    assert!(fresh.allocate_legacy_ids(1).await.unwrap() > 77);
}

#[tokio::test]
async fn shadow_runs_record_events_with_detail_and_the_migration_switch_is_shared() {
    let Some(store) = store().await else { return };
    let row = imported_row(1, Status::Pending, Owner::Legacy);
    store.import_legacy(vec![row]).await.unwrap();
    let id = store
        .get_by_legacy_id(&Scope::All, 1)
        .await
        .unwrap()
        .unwrap()
        .callback
        .id;
    let detail = serde_json::json!({"url": "https://example.com/hook", "method": "POST"});
    store
        .record_event(
            &id,
            fluxcb_core::event::EventKind::Shadowed,
            "shadow",
            detail.clone(),
        )
        .await
        .unwrap();
    let events = store.events(&Scope::All, &id).await.unwrap().unwrap();
    let shadowed = events
        .iter()
        .find(|e| e.kind == fluxcb_core::event::EventKind::Shadowed)
        .expect("recorded");
    assert_eq!(shadowed.detail, detail);
    assert_eq!(shadowed.actor.as_deref(), Some("shadow"));

    assert_eq!(store.migration_state().await.unwrap(), None);
    let state = fluxcb_core::migration::MigrationState {
        mode: fluxcb_core::migration::MigrationMode::Split,
        cutover_percent: 25,
        updated_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 3),
    };
    store.set_migration_state(state).await.unwrap();
    assert_eq!(store.migration_state().await.unwrap(), Some(state));
}
