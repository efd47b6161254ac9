//! `fluxcb redrive`: dead letters back to the queue through the API. It counts the matches
//! first (the endpoint's dry run), then moves them `--batch` at a time (its `limit`), so that
//! progress can be shown and no single request holds the store's writer for long. It moves
//! at most the number it counted: dead letters that appear meanwhile (a redriven callback
//! failing again at once, say) wait for the next run instead of keeping the loop going.
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::cli::RedriveArgs;
use crate::client::Api;
use crate::exit::{Exit, Failure};
use crate::output::{print_json, Output};
use crate::progress::ProgressLine;

pub async fn run(args: RedriveArgs) -> Result<(), Failure> {
    let api = Api::new(&args.client)?;
    let mut filter = Map::new();
    for (k, v) in [
        ("host", args.host),
        ("metadata", args.metadata),
        ("tenant", args.tenant),
    ] {
        if let Some(v) = v {
            filter.insert(k.into(), json!(v));
        }
    }
    let matched = count(&api, &filter).await?;
    let out = args.output.output;
    if args.dry_run {
        match out {
            Output::Json => print_json(&json!({ "moved": 0, "matched": matched })),
            Output::Human => {
                println!("{matched} dead letter(s) match; nothing moved (dry run).")
            }
        }
        return Ok(());
    }

    let progress = ProgressLine::new("redrive", "dead letters");
    if !progress.is_bar() && matched > 0 {
        eprintln!(
            "redrive: moving {matched} dead letter(s), up to {} per request",
            args.batch
        );
    }
    let mut moved = 0;
    while moved < matched {
        let ask = (matched - moved).min(u64::from(args.batch));
        let mut body = filter.clone();
        body.insert("limit".into(), json!(ask));
        let step = api
            .call(
                api.request(Method::POST, "/v1/dead-letters/redrive")
                    .json(&body),
            )
            .await
            .map_err(|f| stopped_after(f, moved, matched));
        let step = match step {
            Ok(answer) => moved_by(&answer),
            Err(f) => {
                progress.finish();
                return Err(f);
            }
        };
        moved += step;
        progress.update(moved, matched, None);
        if step < ask {
            // None left: others were redriven, retried or purged since the count.
            break;
        }
    }
    progress.finish();
    match out {
        Output::Json => print_json(&json!({ "moved": moved })),
        Output::Human => println!("Moved {moved} dead letter(s) back to the queue."),
    }
    Ok(())
}

async fn count(api: &Api, filter: &Map<String, Value>) -> Result<u64, Failure> {
    let mut body = filter.clone();
    body.insert("dry_run".into(), json!(true));
    let answer = api
        .call(
            api.request(Method::POST, "/v1/dead-letters/redrive")
                .json(&body),
        )
        .await?;
    answer["matched"].as_u64().ok_or_else(|| {
        Failure::new(
            Exit::Error,
            format!("the server's dry run answered no count: {answer}"),
        )
    })
}

fn moved_by(answer: &Value) -> u64 {
    answer["moved"].as_u64().unwrap_or(0)
}

/// A failed step says how far the redrive got, since the steps before it stay done.
fn stopped_after(mut f: Failure, moved: u64, matched: u64) -> Failure {
    if moved > 0 {
        f.message = format!(
            "{}; {moved} of {matched} dead letter(s) were moved before that, run it again for \
             the rest",
            f.message
        );
    }
    f
}
