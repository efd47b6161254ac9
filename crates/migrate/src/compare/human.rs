//! The comparison as a person reads it: counts first, then examples.
use std::fmt::Write;

use super::CompareReport;

pub(super) fn render(r: &CompareReport, samples: usize) -> String {
    let mut out = String::new();
    let o = &mut out;
    let verdict = if r.passed { "passed" } else { "FAILED" };
    line(
        o,
        format!(
            "Comparison of the legacy table with fluxcb ({:.1} s): {verdict}",
            r.seconds
        ),
    );
    line(
        o,
        format!(
            "  differences {} (threshold {}): {}",
            r.differences,
            r.threshold,
            r.breakdown()
        ),
    );
    line(o, format!("  legacy rows            {}", r.legacy_rows));
    line(
        o,
        format!(
            "  fluxcb callbacks       {} with a legacy id ({} mirrors, {} fluxcb's own); {} legacy rows matched",
            r.fluxcb_callbacks, r.fluxcb_mirrors, r.fluxcb_owned, r.matched
        ),
    );
    line(o, String::new());

    line(
        o,
        format!(
            "  missing                {}  legacy rows fluxcb has no callback for",
            r.missing.count
        ),
    );
    for m in r.missing.sample.iter().take(samples) {
        line(
            o,
            format!("    #{} {} {}: {}", m.legacy_id, m.status, m.url, m.reason),
        );
    }
    more(o, r.missing.count, samples);
    line(
        o,
        format!(
            "  extra                  {}  mirrors whose legacy row is gone",
            r.extra.count
        ),
    );
    for e in r.extra.sample.iter().take(samples) {
        line(
            o,
            format!("    #{} {} ({})", e.legacy_id, e.callback_id, e.status),
        );
    }
    more(o, r.extra.count, samples);
    line(
        o,
        format!(
            "  field mismatches       {}  rows{}",
            r.field_mismatches.count,
            per(&r.field_mismatches.by_field)
        ),
    );
    for m in r.field_mismatches.sample.iter().take(samples) {
        for f in &m.fields {
            line(
                o,
                format!(
                    "    #{} {}: legacy {}, fluxcb {}",
                    m.legacy_id, f.field, f.legacy, f.fluxcb
                ),
            );
        }
    }
    more(o, r.field_mismatches.count, samples);
    let signatures = if r.request_differences.signatures_compared {
        ""
    } else {
        " (signature values not compared: no legacy secret)"
    };
    line(
        o,
        format!(
            "  request differences    {}  rows{}{signatures}",
            r.request_differences.count,
            per(&r.request_differences.by_aspect)
        ),
    );
    for m in r.request_differences.sample.iter().take(samples) {
        for d in &m.differences {
            line(
                o,
                format!("    #{} {}: {}", m.legacy_id, d.aspect, d.detail),
            );
        }
    }
    more(o, r.request_differences.count, samples);
    if r.unreadable.count > 0 {
        line(
            o,
            format!(
                "  unreadable             {}  legacy rows that cannot be decoded",
                r.unreadable.count
            ),
        );
        for u in r.unreadable.sample.iter().take(samples) {
            line(o, format!("    #{}: {}", u.legacy_id, u.error));
        }
        more(o, r.unreadable.count, samples);
    }
    let rc = &r.receivers;
    line(
        o,
        format!(
            "  blocked receivers      {}  of {} hosts: fluxcb's SSRF policy refuses them",
            rc.blocked.len(),
            rc.hosts_checked
        ),
    );
    for b in rc.blocked.iter().take(samples) {
        let addresses: Vec<String> = b
            .addresses
            .iter()
            .map(|a| format!("{} {}", a.ip, a.reason))
            .collect();
        line(
            o,
            format!(
                "    {} ({} rows, e.g. #{}): {}; {}",
                b.host,
                b.rows,
                b.sample_ids.first().copied().unwrap_or_default(),
                addresses.join(", "),
                b.hint
            ),
        );
    }
    more(o, rc.blocked.len() as u64, samples);

    line(o, String::new());
    line(o, "  not counted as differences:".into());
    line(
        o,
        format!(
            "  stale mirrors          {}  (status or attempts behind legacy; a re-import refreshes them)",
            r.stale_mirrors
        ),
    );
    line(
        o,
        format!(
            "  fluxcb's own           {}  matched rows fluxcb delivers (their legacy row is stale by design)",
            r.owned_here
        ),
    );
    line(
        o,
        format!("  redirecting receivers  {}", rc.redirecting.len()),
    );
    for h in rc.redirecting.iter().take(samples) {
        line(
            o,
            format!(
                "    {} ({} callbacks, {:?}): {}",
                h.host, h.callbacks, h.status_codes, h.note
            ),
        );
    }
    line(
        o,
        format!("  unsupported schemes    {}", rc.unsupported_scheme.len()),
    );
    for s in rc.unsupported_scheme.iter().take(samples) {
        line(
            o,
            format!(
                "    {}://{} ({} rows): fluxcb sends only http and https",
                s.scheme, s.host, s.rows
            ),
        );
    }
    line(
        o,
        format!("  unresolvable hosts     {}", rc.unresolvable.len()),
    );
    for u in rc.unresolvable.iter().take(samples) {
        line(o, format!("    {} ({} rows): {}", u.host, u.rows, u.error));
    }

    line(o, String::new());
    match &r.schedule.legacy_send_delay {
        Some(d) => line(
            o,
            format!(
                "  legacy send delay      p50 {} ms, p99 {} ms, max {} ms over {} rows (sent_at - callback_time, first-attempt successes)",
                d.p50_ms, d.p99_ms, d.max_ms, d.rows
            ),
        ),
        None => line(o, "  legacy send delay      no first-attempt successes".into()),
    }
    let drift = &r.schedule.deliver_at_drift;
    line(
        o,
        format!(
            "  deliver_at drift       max {} ms; {} of {} rows without a legacy attempt differ",
            drift.max_ms, drift.rows_differing, drift.rows_compared
        ),
    );
    line(
        o,
        "  outcomes               legacy table | fluxcb's own".into(),
    );
    let names = ["pending", "sending", "succeeded", "failed", "cancelled"];
    for name in names {
        let get = |c: &std::collections::BTreeMap<String, u64>| c.get(name).copied().unwrap_or(0);
        line(
            o,
            format!(
                "    {name:<20} {:>12} | {}",
                get(&r.outcomes.legacy.counts),
                get(&r.outcomes.fluxcb.counts)
            ),
        );
    }
    let ratio = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.1}%", v * 100.0));
    line(
        o,
        format!(
            "    {:<20} {:>12} | {}",
            "success ratio",
            ratio(r.outcomes.legacy.success_ratio),
            ratio(r.outcomes.fluxcb.success_ratio)
        ),
    );
    for note in &r.notes {
        line(o, format!("  note: {note}"));
    }
    out
}

fn line(out: &mut String, text: String) {
    let _ = writeln!(out, "{text}");
}

fn more(out: &mut String, count: u64, samples: usize) {
    if count > samples as u64 {
        line(
            out,
            format!(
                "    ... and {} more (--output json, --samples)",
                count - samples as u64
            ),
        );
    }
}

fn per(counts: &std::collections::BTreeMap<&'static str, u64>) -> String {
    if counts.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!(" ({})", parts.join(", "))
}
