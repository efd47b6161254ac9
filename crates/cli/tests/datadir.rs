//! The data directory: one server at a time, private file modes, and `fluxcb restore`.
mod common;

use std::time::Duration;

use common::{fluxcb_command, spawn_app, ServeProcess, TestReceiver, PROCESS_API_KEY};
use serde_json::{json, Value};

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let app = spawn_app().await;
    let out = fluxcb_command(app.data_dir.path().parent().unwrap())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(app.data_dir.path())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another fluxcb is using"), "{stderr}");
    app.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_store_and_its_backups_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // A data directory fluxcb creates is its owner's alone (an existing one is left as it is).
    let fresh = app.data_dir.path().join("fresh");
    assert!(fluxcb_command(app.data_dir.path())
        .args(["keys", "list", "--data-dir"])
        .arg(&fresh)
        .status()
        .unwrap()
        .success());
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&app.data_dir.path().join("fluxcb.db")), 0o600);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("copy.db");
    let status = fluxcb_command(work.path())
        .args(["backup", "--out"])
        .arg(&out)
        .arg("--data-dir")
        .arg(app.data_dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(mode(&out), 0o600);
    app.stop().await;
}

fn restore(
    cwd: &std::path::Path,
    data: &std::path::Path,
    from: &std::path::Path,
) -> std::process::Output {
    fluxcb_command(cwd)
        .args(["restore", "--data-dir"])
        .arg(data)
        .arg("--from")
        .arg(from)
        .output()
        .unwrap()
}

#[tokio::test]
async fn restore_refuses_a_running_store_then_replaces_it_keeping_the_old_one() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let log = work.path().join("server.log");
    let rx = TestReceiver::start().await;
    let http = reqwest::Client::new();
    let server = ServeProcess::start(&data, &log, None, &[]).await;
    let create = |body: Value| {
        let http = http.clone();
        let url = server.url("/v1/callbacks");
        async move {
            let r = http
                .post(url)
                .bearer_auth(PROCESS_API_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let kept = create(json!({"url": rx.url("/ok/kept")})).await;
    rx.wait_for("/ok/kept", 1, Duration::from_secs(10)).await;
    let backup = work.path().join("backup.db");
    assert!(fluxcb_command(work.path())
        .args(["backup", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&backup)
        .status()
        .unwrap()
        .success());
    let lost = create(json!({"url": rx.url("/ok/later")})).await;

    // A restore under a running server is refused, and changes nothing.
    let out = restore(work.path(), &data, &backup);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));

    // Not a backup at all: refused.
    let junk = work.path().join("junk.db");
    std::fs::write(&junk, b"not a database").unwrap();
    server.sigkill();
    let out = restore(work.path(), &data, &junk);
    assert!(!out.status.success(), "junk was restored");

    // After a crash (WAL left behind), the restore gives exactly the backup.
    let out = restore(work.path(), &data, &backup);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kept_files: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("fluxcb.db.before-restore-"))
        .collect();
    assert!(!kept_files.is_empty(), "the replaced store was not kept");
    let server = ServeProcess::start(&data, &log, None, &[]).await;
    let get = |id: String| {
        let http = http.clone();
        let url = server.url(&format!("/v1/callbacks/{id}"));
        async move {
            http.get(url)
                .bearer_auth(PROCESS_API_KEY)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(get(kept).await, 200);
    assert_eq!(get(lost).await, 404);
    server.sigkill();
}
