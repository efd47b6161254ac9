// Oversized request heads, on both backends: a path and query past 8 KiB is a 414 and headers
// past 96 or 32 KiB are a 431, each as a problem the caller can read; hyper's own limit (100
// headers) answers 431 too; a request just within the limits is served.
mod head_limits {
    use serde_json::Value;

    use super::common::spawn_on;
    use super::BACKEND;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_request_lines_and_headers_are_refused_with_a_problem() {
        let Some(app) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        let get = |path: String, headers: Vec<(String, String)>| {
            let mut r = app.http.get(app.url(&path));
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.send()
        };
        let problem = |r: reqwest::Response| async move {
            let status = r.status().as_u16();
            let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
            let body: Value = r.json().await.unwrap();
            assert_eq!(content_type, "application/problem+json");
            (status, body["type"].as_str().unwrap().to_owned())
        };

        // Just within: 8 KiB of path and query, 95 headers, ~30 KiB of headers.
        let pad = |n: usize| "a".repeat(n);
        let within = format!("/healthz?pad={}", pad(8 * 1024 - "/healthz?pad=".len()));
        let many: Vec<_> = (0..90).map(|i| (format!("x-h{i}"), "v".into())).collect();
        let big: Vec<_> = (0..30).map(|i| (format!("x-big{i}"), pad(1000))).collect();
        for (path, headers) in [
            (within.clone(), vec![]),
            ("/healthz".into(), many),
            ("/healthz".into(), big),
        ] {
            assert_eq!(get(path, headers).await.unwrap().status(), 200);
        }

        let too_long = format!("{within}a");
        let r = get(too_long, vec![]).await.unwrap();
        assert_eq!(
            problem(r).await,
            (414, "urn:fluxcb:problem:uri-too-long".into())
        );
        let r = get(format!("/api/callbacks/?q={}", pad(9000)), vec![])
            .await
            .unwrap();
        assert_eq!(r.status(), 414, "the legacy API has the same limit");

        let too_many: Vec<_> = (0..97).map(|i| (format!("x-h{i}"), "v".into())).collect();
        let r = get("/healthz".into(), too_many).await.unwrap();
        assert_eq!(
            problem(r).await,
            (431, "urn:fluxcb:problem:headers-too-large".into())
        );
        let too_big: Vec<_> = (0..40).map(|i| (format!("x-big{i}"), pad(1000))).collect();
        let r = get("/healthz".into(), too_big).await.unwrap();
        assert_eq!(
            problem(r).await,
            (431, "urn:fluxcb:problem:headers-too-large".into())
        );
        // Past hyper's own count: refused before routing; the server carries on.
        let flood: Vec<_> = (0..150).map(|i| (format!("x-h{i}"), "v".into())).collect();
        let r = get("/healthz".into(), flood).await.unwrap();
        assert_eq!(r.status(), 431);
        assert_eq!(get("/healthz".into(), vec![]).await.unwrap().status(), 200);
    }
}
