//! What the migration tests do beside the legacy table: run SQL on it directly (as legacy's
//! worker or an operator would), and read the JSON report a `fluxcb migrate` command prints.
use std::process::Output;

use serde_json::Value;

/// Runs `statements` on the legacy database at `url`.
pub async fn sql(url: &str, statements: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the legacy database");
    tokio::spawn(conn);
    client.batch_execute(statements).await.expect("legacy SQL");
}

/// The JSON report on a command's stdout; fails with both streams when there is none.
pub fn json_report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON report\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
