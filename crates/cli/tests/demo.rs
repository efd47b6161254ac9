//! `fluxcb demo`, as a newcomer runs it: the real binary, its real receivers and traffic. The
//! test reads the console URL and API key it prints and checks through the API that within a
//! minute there are delivered callbacks, callbacks delivered on a retry and dead letters of
//! both kinds (410 at once, and out of attempts on the demo's short schedule); that the console
//! answers and takes the key; that the SSRF allow-list lets through only the receivers; that the
//! server keeps serving after the traffic stops; and that Ctrl-C ends it cleanly and removes its
//! temporary store.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Everything the demo printed on stdout so far, line by line.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    fn capture(child: &mut Child) -> Self {
        let output = Output::default();
        let lines = output.0.clone();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        output
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    /// The first line matching `pick`, waiting for it up to `within`.
    async fn wait_for<T>(&self, within: Duration, pick: impl Fn(&str) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.0.lock().unwrap().iter().find_map(|l| pick(l)) {
                return Some(found);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The value after `label` on a banner line such as `  Console:  http://…`.
fn labelled(line: &str, label: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix(label)?;
    rest.split_whitespace().next().map(str::to_owned)
}

struct Demo {
    child: Child,
    output: Output,
    log: std::path::PathBuf,
}

impl Demo {
    fn log(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.output.text(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(http: &reqwest::Client, key: &str, url: &str) -> Value {
    let r = http.get(url).bearer_auth(key).send().await.expect("GET");
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.json().await.expect("json")
}

fn callbacks(list: &Value) -> &[Value] {
    list["data"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

#[tokio::test]
async fn the_demo_shows_deliveries_retries_and_dead_letters_within_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let mut cmd = common::fluxcb_command(dir.path());
    cmd.args(["demo", "--port", "0", "--rate", "20", "--for", "10s"])
        // The demo's temporary store goes under the test's directory.
        .env("TMPDIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().expect("fluxcb demo starts");
    let output = Output::capture(&mut child);
    let demo = Demo { child, output, log };

    let started = Instant::now();
    let console = demo
        .output
        .wait_for(Duration::from_secs(60), |l| labelled(l, "Console:"))
        .await
        .unwrap_or_else(|| panic!("no console URL printed; {}", demo.log()));
    let key = demo
        .output
        .wait_for(Duration::from_secs(5), |l| labelled(l, "API key:"))
        .await
        .unwrap_or_else(|| panic!("no API key printed; {}", demo.log()));
    let data_dir = demo
        .output
        .wait_for(Duration::from_secs(5), |l| labelled(l, "Data:"))
        .await
        .unwrap_or_else(|| panic!("no data directory printed; {}", demo.log()));
    assert!(
        data_dir.starts_with(dir.path().to_str().unwrap()),
        "a fresh temporary store: {data_dir}"
    );
    assert!(std::path::Path::new(&data_dir).is_dir());
    let receiver_hosts: Vec<String> = demo
        .output
        .text()
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("http://"))
        .filter_map(|rest| rest.split(':').next().map(str::to_owned))
        .collect();
    assert_eq!(receiver_hosts.len(), 4, "four receivers; {}", demo.log());
    let base = console
        .strip_suffix("/console")
        .unwrap_or_else(|| panic!("console URL {console}"))
        .to_owned();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let api = |path: &str| format!("{base}{path}");

    // Within a minute of the start: delivered callbacks, some of them on a retry, and dead
    // letters of both kinds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first_dead_letter: Option<Duration> = None;
    let (delivered, retried, gone, exhausted) = loop {
        let delivered = get(
            &http,
            &key,
            &api("/v1/callbacks?status=delivered&limit=500"),
        )
        .await;
        let dead = get(&http, &key, &api("/v1/dead-letters?limit=500")).await;
        if first_dead_letter.is_none() && !callbacks(&dead).is_empty() {
            first_dead_letter = Some(started.elapsed());
        }
        let retried = callbacks(&delivered)
            .iter()
            .find(|c| c["attempts_made"].as_u64() > Some(1))
            .cloned();
        let gone = callbacks(&dead)
            .iter()
            .find(|c| c["metadata"]["receiver"] == "crm")
            .cloned();
        let exhausted = callbacks(&dead)
            .iter()
            .find(|c| c["metadata"]["receiver"] == "warehouse")
            .cloned();
        for c in callbacks(&dead) {
            let receiver = &c["metadata"]["receiver"];
            assert!(
                receiver == "crm" || receiver == "warehouse",
                "only the receivers that refuse on purpose dead-letter (a bad signature would \
                 show here): {c}"
            );
        }
        if let (Some(first), Some(retried), Some(gone), Some(exhausted)) = (
            callbacks(&delivered).first(),
            retried.clone(),
            gone.clone(),
            exhausted.clone(),
        ) {
            break (first.clone(), retried, gone, exhausted);
        }
        assert!(
            Instant::now() < deadline,
            "within 60 s: delivered {}, delivered on a retry {}, 410 dead letter {}, \
             exhausted dead letter {}; {}",
            !callbacks(&delivered).is_empty(),
            retried.is_some(),
            gone.is_some(),
            exhausted.is_some(),
            demo.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "first dead letter after {:?}, all four kinds after {:?}",
        first_dead_letter.unwrap(),
        started.elapsed()
    );
    assert_eq!(delivered["status"], "delivered");
    assert_eq!(retried["metadata"]["receiver"], "billing", "{retried}");
    // The 410 stops at once; the warehouse's 500s run out of the demo's 4 attempts (the
    // default schedule would take hours).
    assert_eq!(gone["attempts_made"], 1, "{gone}");
    assert_eq!(exhausted["attempts_made"], 4, "{exhausted}");
    assert_eq!(exhausted["max_attempts"], 4, "{exhausted}");
    let detail = get(
        &http,
        &key,
        &api(&format!(
            "/v1/callbacks/{}",
            exhausted["id"].as_str().unwrap()
        )),
    )
    .await;
    let statuses: Vec<&Value> = detail["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status_code"])
        .collect();
    assert_eq!(statuses, [&json!(500); 4], "{detail}");

    // The printed console URL answers with the login page, and the printed key logs in.
    let page = http.get(&console).send().await.unwrap();
    assert_eq!(page.status(), 200, "{console} after its redirect");
    assert!(page.text().await.unwrap().contains("id=\"key\""));
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = no_redirects
        .post(api("/console/login"))
        .form(&[("key", key.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303, "the printed key opens the console");

    // The traffic stops after --for; the server keeps serving.
    let sent: u64 = demo
        .output
        .wait_for(Duration::from_secs(60), |l| {
            l.strip_prefix("Sent ")?
                .split_once(" callbacks in ")?
                .0
                .parse()
                .ok()
        })
        .await
        .unwrap_or_else(|| panic!("the traffic did not stop after 10 s; {}", demo.log()));
    assert!(sent > 0);
    let stats = get(&http, &key, &api("/v1/stats")).await;
    assert_eq!(
        stats["totals"]["accepted"], sent,
        "every callback the demo counted is in the store: {stats}"
    );

    // Loopback is not opened wholesale: an address beside the receivers' is still refused.
    let other = ["127.0.0.1", "127.0.0.2"]
        .into_iter()
        .find(|ip| !receiver_hosts.iter().any(|h| h == ip))
        .unwrap();
    let port = base.rsplit(':').next().unwrap();
    let r = http
        .post(api("/v1/callbacks"))
        .bearer_auth(&key)
        .json(&json!({"url": format!("http://{other}:{port}/healthz")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let blocked = loop {
        let c = get(&http, &key, &api(&format!("/v1/callbacks/{id}"))).await;
        if c["status"] == "failed" {
            break c;
        }
        assert!(Instant::now() < deadline, "not refused: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        blocked["attempts"][0]["error"], "blocked_target",
        "{blocked}"
    );

    // Ctrl-C: a clean exit, and the temporary store is gone.
    let pid = demo.child.id() as libc::pid_t;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let mut demo = demo;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 30 s after SIGINT; {}",
            demo.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status}; {}", demo.log());
    demo.output
        .wait_for(Duration::from_secs(5), |l| {
            l.contains("every signature verified").then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("the receivers saw bad signatures; {}", demo.log()));
    assert!(
        !std::path::Path::new(&data_dir).exists(),
        "{data_dir} removed; {}",
        demo.log()
    );
}
