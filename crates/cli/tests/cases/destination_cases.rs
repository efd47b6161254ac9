// Registered destinations end to end, on both backends: the API (secrets shown once,
// conflicts, validation, tenant isolation), signing with a destination's own secret and its
// rotation, the precedence of settings, pause and resume, rate and concurrency limits, and a
// destination's wire format, all against a real receiver on loopback.
mod destinations {
    use std::time::{Duration, Instant};

    use super::common::{spawn_on, Received, TestApp, TestReceiver};
        use super::BACKEND;
    use fluxcb_core::signing::{verify, SigningSecret};
    use serde_json::{json, Value};

    async fn register(app: &TestApp, key: &str, body: Value) -> Value {
        let r = app.post_as(key, "/v1/destinations", &body).await;
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "{v}");
        v
    }

    async fn patch(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
        app.http
            .patch(app.url(path))
            .bearer_auth(&app.key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    fn signed_by(received: &Received, secret: &str) -> bool {
        let secret = SigningSecret::parse(secret).unwrap();
        let id = received.header("webhook-id").unwrap();
        let ts: i64 = received
            .header("webhook-timestamp")
            .unwrap()
            .parse()
            .unwrap();
        let header = received.header("webhook-signature").unwrap();
        verify(&secret, id, ts, &received.body, header, ts, 5)
    }

    fn fields(problem: &Value) -> Vec<String> {
        problem["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registrations_are_managed_through_the_api_and_secrets_are_shown_once() {
        let Some(app) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        let rx = TestReceiver::start().await;
        let created = register(
            &app,
            &app.key,
            json!({
                "match": { "url_prefix": rx.url("/hooks/") },
                "description": "orders",
                "settings": { "timeout_ms": 1500, "retry_schedule": ["1s", "1m"], "rate_limit_per_second": 50.0 },
            }),
        )
        .await;
        let id = created["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("dst_"));
        let secret = created["signing_secret"].as_str().unwrap();
        assert!(secret.starts_with("whsec_"));
        assert_eq!(
            created["match"]["url_prefix"],
            format!("http://{}/hooks", rx.addr),
            "normalised: the trailing slash goes"
        );
        assert_eq!(created["settings"]["retry_schedule"], json!(["1s", "1m"]));
        assert_eq!(created["active_secrets"], 1);

        // Never again: not in a read, not in the list.
        let shown = app.get_json(&format!("/v1/destinations/{id}")).await;
        assert!(shown.get("signing_secret").is_none(), "{shown}");
        let list = app.get_json("/v1/destinations").await;
        assert_eq!(list["data"].as_array().unwrap().len(), 1);
        assert!(!list.to_string().contains("whsec_"), "{list}");

        // The same match again is a conflict; a different one is not.
        let r = app
            .post(
                "/v1/destinations",
                &json!({ "match": { "url_prefix": rx.url("/hooks") } }),
            )
            .await;
        assert_eq!(r.status(), 409);
        register(
            &app,
            &app.key,
            json!({ "match": { "origin": format!("http://{}", rx.addr) } }),
        )
        .await;

        // Bad input: every problem named by its field, nothing stored.
        let r = app
            .post(
                "/v1/destinations",
                &json!({
                    "match": { "origin": "http://a.test/path" },
                    "settings": { "max_in_flight": 0, "wire_format": "soap", "retry_schedule": ["soon"] },
                    "tls": { "client_certificate_pem": "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n" },
                }),
            )
            .await;
        assert_eq!(r.status(), 400);
        let problem: Value = r.json().await.unwrap();
        let named = fields(&problem);
        for field in [
            "match.origin",
            "settings.wire_format",
            "settings.retry_schedule",
            "settings.max_in_flight",
            "tls",
        ] {
            assert!(named.iter().any(|f| f == field), "{field} in {problem}");
        }
        let r = app
            .post(
                "/v1/destinations",
                &json!({ "match": { "origin": "http://a.test", "any": true } }),
            )
            .await;
        assert_eq!(r.status(), 400, "exactly one kind of match");
        assert_eq!(
            app.get_json("/v1/destinations").await["data"]
                .as_array()
                .unwrap()
                .len(),
            2
        );

        // PATCH replaces the sections it names; the revision moves on.
        let r = patch(
            &app,
            &format!("/v1/destinations/{id}"),
            json!({ "settings": { "max_attempts": 4 }, "description": "orders v2" }),
        )
        .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["settings"], json!({ "max_attempts": 4 }));
        assert_eq!(v["description"], "orders v2");
        assert_eq!(v["revision"], 2);

        // Another tenant neither sees nor touches it.
        let other = tenant_key(&app, "globex").await;
        assert_eq!(
            app.get_as(&other, &format!("/v1/destinations/{id}"))
                .await
                .status(),
            404
        );
        let theirs: Value = app
            .get_as(&other, "/v1/destinations")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(theirs["data"], json!([]));
        let r = app
            .post_as(&other, &format!("/v1/destinations/{id}/pause"), &json!({}))
            .await;
        assert_eq!(r.status(), 404);

        // Rotation shows the new secret once and keeps both signing.
        let r = app
            .post(&format!("/v1/destinations/{id}/rotate-secret"), &json!({}))
            .await;
        let rotated: Value = r.json().await.unwrap();
        assert_ne!(rotated["signing_secret"], secret);
        assert_eq!(rotated["active_secrets"], 2);

        let r = app
            .http
            .delete(app.url(&format!("/v1/destinations/{id}")))
            .bearer_auth(&app.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            app.get(&format!("/v1/destinations/{id}")).await.status(),
            404
        );
        app.stop().await;
    }

    async fn tenant_key(app: &TestApp, tenant: &str) -> String {
        let r = app
            .post(
                "/v1/keys",
                &json!({ "name": format!("{tenant}-key"), "tenant": tenant, "role": "tenant" }),
            )
            .await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// One receiver never holds a key that verifies another's messages: a registered destination
    /// signs with its own secret, everything else with the tenant's; during a rotation both of the
    /// destination's secrets sign.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registered_destination_signs_with_its_own_secret() {
        let Some(app) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        let rx = TestReceiver::start().await;
        let tenant_secret = app.signing_secret().await;
        let d = register(
            &app,
            &app.key,
            json!({ "match": { "url_prefix": rx.url("/ok/registered") } }),
        )
        .await;
        let own = d["signing_secret"].as_str().unwrap().to_owned();
        app.create(json!({ "url": rx.url("/ok/registered"), "payload": { "n": 1 } }))
            .await;
        app.create(json!({ "url": rx.url("/ok/other"), "payload": { "n": 2 } }))
            .await;
        let registered = rx
            .wait_for("/ok/registered", 1, Duration::from_secs(10))
            .await;
        let other = rx.wait_for("/ok/other", 1, Duration::from_secs(10)).await;
        assert!(signed_by(&registered[0], &own));
        assert!(
            !signed_by(&registered[0], &tenant_secret),
            "the tenant's secret does not verify the destination's messages"
        );
        assert!(signed_by(&other[0], &tenant_secret));
        assert!(!signed_by(&other[0], &own));

        let id = d["id"].as_str().unwrap();
        let rotated: Value = app
            .post(&format!("/v1/destinations/{id}/rotate-secret"), &json!({}))
            .await
            .json()
            .await
            .unwrap();
        let fresh = rotated["signing_secret"].as_str().unwrap();
        if BACKEND == super::common::Backend::Aws {
            // The workers are other nodes: they read registrations again within the
            // directory's refresh time (the embedded server shares one copy with its API).
            tokio::time::sleep(fluxcb_core::directory::DEFAULT_TTL + Duration::from_millis(500))
                .await;
        }
        app.create(json!({ "url": rx.url("/ok/registered"), "payload": { "n": 3 } }))
            .await;
        let after = rx
            .wait_for("/ok/registered", 2, Duration::from_secs(10))
            .await;
        assert!(signed_by(&after[1], fresh), "the new secret signs");
        assert!(
            signed_by(&after[1], &own),
            "the old one still signs during its grace period"
        );
        app.stop().await;
    }

    /// The callback's own setting, then the most specific registration's, then the tenant's
    /// (`any`), then the installation's (11 attempts).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn settings_resolve_callback_then_destination_then_tenant_then_installation() {
        let Some(app) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        let rx = TestReceiver::start().await;
        register(
            &app,
            &app.key,
            json!({ "match": { "any": true }, "settings": { "max_attempts": 4, "retry_schedule": ["20ms"] } }),
        )
        .await;
        register(
            &app,
            &app.key,
            json!({ "match": { "url_prefix": rx.url("/status") }, "settings": { "max_attempts": 2 } }),
        )
        .await;
        let by_destination = app
            .create(json!({ "url": rx.url("/status/500"), "payload": {} }))
            .await;
        let by_callback = app
            .create(json!({ "url": rx.url("/status/503"), "payload": {}, "max_attempts": 3 }))
            .await;
        let by_tenant = app
            .create(json!({ "url": rx.url("/flaky/50/tenant"), "payload": {} }))
            .await;
        for (id, attempts) in [(by_destination, 2), (by_callback, 3), (by_tenant, 4)] {
            let v = app
                .wait_status(&id, "failed", Duration::from_secs(15))
                .await;
            assert_eq!(v["attempts_made"], attempts, "{v}");
        }
        assert_eq!(rx.received_on("/status/500").len(), 2);
        assert_eq!(rx.received_on("/status/503").len(), 3);
        assert_eq!(rx.received_on("/flaky/50/tenant").len(), 4);
        app.stop().await;
    }

    /// A paused destination's callbacks wait with no attempt counted, and go once it is resumed;
    /// other destinations are not held up meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pausing_holds_callbacks_without_attempts_and_resuming_delivers_them() {
        let Some(app) = spawn_on(BACKEND, |c| c.paused_recheck = "200ms".into()).await else {
            return;
        };
        let rx = TestReceiver::start().await;
        let d = register(
            &app,
            &app.key,
            json!({ "match": { "url_prefix": rx.url("/ok/paused") }, "paused": true }),
        )
        .await;
        assert_eq!(d["paused"], true);
        let mut held = Vec::new();
        for i in 0..5 {
            held.push(
                app.create(json!({ "url": rx.url("/ok/paused"), "payload": { "i": i } }))
                    .await,
            );
        }
        let free = app
            .create(json!({ "url": rx.url("/ok/free"), "payload": {} }))
            .await;
        app.wait_status(&free, "delivered", Duration::from_secs(10))
            .await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(rx.received_on("/ok/paused").is_empty());
        for id in &held {
            let v = app.get_json(&format!("/v1/callbacks/{id}")).await;
            // Waiting; a worker may hold it for the instant between its claim and deferral.
            assert!(
                v["status"] == "pending" || v["status"] == "delivering",
                "{v}"
            );
            assert_eq!(v["attempts_made"], 0, "{v}");
        }
        let id = d["id"].as_str().unwrap();
        let r = app
            .post(&format!("/v1/destinations/{id}/resume"), &json!({}))
            .await;
        assert_eq!(r.status(), 200);
        for id in &held {
            let v = app
                .wait_status(id, "delivered", Duration::from_secs(10))
                .await;
            assert_eq!(v["attempts_made"], 1);
        }
        assert_eq!(rx.received_on("/ok/paused").len(), 5);
        app.stop().await;
    }

    /// A rate limit spreads requests out (no failures, no attempts lost to it); a concurrency
    /// limit of 1 keeps one request at a time on the wire.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rate_and_concurrency_limits_hold_requests_back_without_failing_them() {
        let Some(app) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        let rx = TestReceiver::start().await;
        register(
            &app,
            &app.key,
            json!({ "match": { "url_prefix": rx.url("/ok/rated") }, "settings": { "rate_limit_per_second": 20.0 } }),
        )
        .await;
        register(
            &app,
            &app.key,
            json!({ "match": { "url_prefix": rx.url("/hang") }, "settings": { "max_in_flight": 1 } }),
        )
        .await;
        let body = json!({
            "callbacks": (0..20).map(|i| json!({ "url": rx.url("/ok/rated"), "payload": { "i": i } })).collect::<Vec<_>>()
        });
        let started = Instant::now();
        let r = app.post("/v1/callbacks/batch", &body).await;
        assert_eq!(r.status(), 202);
        let got = rx.wait_for("/ok/rated", 20, Duration::from_secs(15)).await;
        let span = got.last().unwrap().at - got.first().unwrap().at;
        // 20 requests at 20/s: 19 intervals of 50 ms after the first.
        assert!(
            span >= Duration::from_millis(800),
            "20 requests within {span:?} at 20/s"
        );
        eprintln!(
            "rate limit: 20 requests over {span:?} ({:?} after acceptance)",
            started.elapsed()
        );

        let body = json!({
            "callbacks": (0..4).map(|i| json!({ "url": rx.url("/hang/150"), "payload": { "i": i } })).collect::<Vec<_>>()
        });
        let r = app.post("/v1/callbacks/batch", &body).await;
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        let hung = rx.wait_for("/hang/150", 4, Duration::from_secs(15)).await;
        for pair in hung.windows(2) {
            assert!(
                pair[1].at - pair[0].at >= Duration::from_millis(140),
                "one at a time: arrivals {:?} apart",
                pair[1].at - pair[0].at
            );
        }
        for item in v["callbacks"].as_array().unwrap() {
            let id = item["id"].as_str().unwrap();
            let cb = app
                .wait_status(id, "delivered", Duration::from_secs(10))
                .await;
            assert_eq!(cb["attempts_made"], 1, "held back, not failed: {cb}");
        }
        app.stop().await;
    }

    /// A registration's wire format applies to callbacks that do not name one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_destination_wire_format_applies_to_callbacks_that_name_none() {
        let Some(app) = spawn_on(BACKEND, |c| {
            c.legacy_signing_secret = Some("legacy-shared-secret".into());
        }).await else {
            return;
        };
        let rx = TestReceiver::start().await;
        register(
            &app,
            &app.key,
            json!({ "match": { "url_prefix": rx.url("/ok/both") }, "settings": { "wire_format": "both" } }),
        )
        .await;
        let inherits = app
            .create(json!({ "url": rx.url("/ok/both"), "payload": {} }))
            .await;
        let own = app
            .create(
                json!({ "url": rx.url("/ok/both"), "payload": {}, "wire_format": "standard_webhooks" }),
            )
            .await;
        let v = app.get_json(&format!("/v1/callbacks/{inherits}")).await;
        assert_eq!(v["wire_format"], "both");
        let v = app.get_json(&format!("/v1/callbacks/{own}")).await;
        assert_eq!(v["wire_format"], "standard_webhooks");
        let got = rx.wait_for("/ok/both", 2, Duration::from_secs(10)).await;
        let legacy_headers = got
            .iter()
            .filter(|r| r.header("x-flux-signature").is_some())
            .count();
        assert_eq!(
            legacy_headers, 1,
            "only the inheriting callback in both formats"
        );
        app.stop().await;
    }

    const SERVER_CA: &str = include_str!("../../../delivery/tests/fixtures/server-ca.pem");
    const SERVER_CERT: &str = include_str!("../../../delivery/tests/fixtures/server.pem");
    const SERVER_KEY: &str = include_str!("../../../delivery/tests/fixtures/server.key");
    const CLIENT_CA: &str = include_str!("../../../delivery/tests/fixtures/client-ca.pem");
    const CLIENT_CERT: &str = include_str!("../../../delivery/tests/fixtures/client.pem");
    const CLIENT_KEY: &str = include_str!("../../../delivery/tests/fixtures/client.key");

    /// An https receiver on loopback that insists on a client certificate from the client CA;
    /// answers 200 and counts the requests that got through.
    async fn mtls_receiver() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let certs = rustls_pemfile::certs(&mut SERVER_CERT.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut SERVER_KEY.as_bytes())
            .unwrap()
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut CLIENT_CA.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    // One HTTP/1.1 request: the head, then a body of content-length bytes.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = tls.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (addr, served)
    }

    /// A receiver behind a private CA that asks for a client certificate: reached through its
    /// registration's CA bundle and client certificate; without them the same receiver is a
    /// TLS failure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registered_ca_bundle_and_client_certificate_reach_an_mtls_receiver() {
        let Some(app) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        let (addr, served) = mtls_receiver().await;
        let d = register(
            &app,
            &app.key,
            json!({
                "match": { "url_prefix": format!("https://{addr}/registered") },
                "tls": {
                    "ca_bundle_pem": SERVER_CA,
                    "client_certificate_pem": CLIENT_CERT,
                    "client_key_pem": CLIENT_KEY,
                },
            }),
        )
        .await;
        assert_eq!(d["tls"]["client_key_set"], true);
        assert!(!d.to_string().contains("PRIVATE KEY"), "the key is never shown: {d}");
        let through = app
            .create(json!({ "url": format!("https://{addr}/registered/hook"), "payload": {} }))
            .await;
        let bare = app
            .create(json!({ "url": format!("https://{addr}/other"), "payload": {}, "max_attempts": 1 }))
            .await;
        let v = app
            .wait_status(&through, "delivered", Duration::from_secs(15))
            .await;
        assert_eq!(v["attempts_made"], 1, "{v}");
        let v = app.wait_status(&bare, "failed", Duration::from_secs(15)).await;
        assert_eq!(v["attempts"][0]["error"], "tls", "{v}");
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);

        // PEM that cannot be read is refused when it is given, not at the first attempt.
        let r = app
            .post(
                "/v1/destinations",
                &json!({
                    "match": { "origin": format!("https://{addr}") },
                    "tls": { "ca_bundle_pem": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n" },
                }),
            )
            .await;
        assert_eq!(r.status(), 400);
        app.stop().await;
    }
}
