//! A loopback OTLP/HTTP collector for tests: accepts `POST /v1/traces`, decodes the protobuf
//! body with the OTLP definitions, and keeps every body and span it was sent.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
pub use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// What the collector was sent: every request body as received, and the spans in them with
/// their resource's `service.name`.
#[derive(Clone, Default)]
pub struct Exported {
    bodies: Arc<Mutex<Vec<Bytes>>>,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

pub struct Collector {
    pub addr: SocketAddr,
    exported: Exported,
    _task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> Self {
        let exported = Exported::default();
        let app = Router::new()
            .route("/v1/traces", post(accept_traces))
            .with_state(exported.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            exported,
            _task: task,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> usize {
        self.exported.bodies.lock().unwrap().len()
    }

    pub fn spans(&self) -> Vec<(String, Span)> {
        self.exported.spans.lock().unwrap().clone()
    }

    pub fn bodies(&self) -> Vec<Bytes> {
        self.exported.bodies.lock().unwrap().clone()
    }
}

async fn accept_traces(State(exported): State<Exported>, body: Bytes) -> impl IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body.clone()) else {
        return (StatusCode::BAD_REQUEST, Vec::new()).into_response();
    };
    exported.bodies.lock().unwrap().push(body);
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| string_attribute(&r.attributes, "service.name"))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                exported.spans.lock().unwrap().push((service.clone(), span));
            }
        }
    }
    // An empty ExportTraceServiceResponse: everything accepted.
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::new(),
    )
        .into_response()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        AnyValue::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

pub fn int_attribute(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key)? {
        AnyValue::IntValue(i) => Some(*i),
        _ => None,
    }
}
