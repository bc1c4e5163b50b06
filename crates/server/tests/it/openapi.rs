//! The OpenAPI document against the code: every route, status, reason and header the code can
//! answer is in the document, and everything the document promises is in the code. The lists
//! come from the code's own tables ([`Route::ALL`], [`ApiError::one_of_each`]), so a new route
//! or error fails here until the document follows.

use std::collections::{BTreeMap, BTreeSet};

use axum::response::IntoResponse;
use floodgate_server::ApiError;
use floodgate_server::ServerHandle;
use floodgate_server::auth::{Needs, Scope, needs};
use floodgate_server::routes::{OPENAPI_DOCUMENT, Route};
use serde_json::Value;

use crate::support::{client, test_config};

/// The methods OpenAPI allows as keys of a path item.
const OPENAPI_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    serde_json::from_str(OPENAPI_DOCUMENT).expect("openapi.json is JSON")
}

/// Follows a local `$ref` (`#/components/...`) once, or returns the value itself.
fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => document
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {reference}")),
        None => value,
    }
}

/// The `enum` of a schema's property, as a set of strings.
fn enum_of(schema: &Value, property: &str) -> BTreeSet<String> {
    schema["properties"][property]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("no enum for {property} in {schema}"))
        .iter()
        .map(|value| value.as_str().expect("string enum").to_owned())
        .collect()
}

/// Every (method, path) the document declares.
fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("path item");
            item.keys()
                .filter(|key| OPENAPI_METHODS.contains(&key.as_str()))
                .map(|method| (method.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

// Proves the document declares exactly the routes of the router's table, with the same
// methods and path templates, and every operation documents the 400 `invalid_host` that any
// request can get.
#[test]
fn every_route_is_documented_and_nothing_else() {
    let document = document();
    let served: BTreeSet<(String, String)> = Route::ALL
        .iter()
        .map(|route| (route.method().to_string(), route.path().to_owned()))
        .collect();
    assert_eq!(documented_operations(&document), served);
    for route in Route::ALL {
        let operation = &document["paths"][route.path()][route.method().as_str().to_lowercase()];
        assert!(
            operation["responses"].get("400").is_some(),
            "{route:?} must document 400 (invalid_host applies to every request)"
        );
    }
}

// Proves the document's access rules are the gate's (`auth::needs`): an operation whose path
// needs a scope documents 401 and 403, names that scope in `x-scope` and accepts a bearer token;
// an open one documents none of it; 429 (the per-token rate limit) is documented exactly on the
// ingest POSTs, the requests the limiter counts.
#[test]
fn access_rules_are_documented() {
    let document = document();
    for route in Route::ALL {
        let operation = &document["paths"][route.path()][route.method().as_str().to_lowercase()];
        let responses = &operation["responses"];
        let scope = match needs(route.path()) {
            Needs::Nothing => None,
            Needs::Scope(scope) => Some(scope),
            Needs::AnyToken => panic!("{route:?}: a served route needs a named scope or nothing"),
        };
        let documents = |status: &str| responses.get(status).is_some();
        assert_eq!(documents("401"), scope.is_some(), "{route:?} 401");
        assert_eq!(documents("403"), scope.is_some(), "{route:?} 403");
        let scope_name = scope.map(|scope| format!("{scope:?}").to_lowercase());
        assert_eq!(
            operation["x-scope"].as_str().map(str::to_owned),
            scope_name,
            "{route:?} x-scope"
        );
        if scope.is_some() {
            assert!(
                operation["security"]
                    .as_array()
                    .is_some_and(|options| options
                        .iter()
                        .any(|option| option.get("bearer").is_some())),
                "{route:?} accepts a bearer token"
            );
        }
        let limited = scope == Some(Scope::Ingest) && route.method() == http::Method::POST;
        assert_eq!(documents("429"), limited, "{route:?} 429");
    }
}

// Proves the error reasons and statuses of the document are the code's: the global `Reason`
// enum is exactly every reason `ApiError` can produce, and for each error status the document
// has an `ErrorNNN` schema whose reason enum is exactly the reasons the code answers with that
// status, and whose `status` enum is what the code writes.
#[test]
fn every_reason_and_status_is_documented_and_nothing_else() {
    let document = document();
    let schemas = &document["components"]["schemas"];
    let mut by_status: BTreeMap<u16, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for error in ApiError::one_of_each() {
        let status = error.status().as_u16();
        let body = error_body(error);
        let entry = by_status.entry(status).or_default();
        entry
            .0
            .insert(body["reason"].as_str().expect("reason").to_owned());
        entry
            .1
            .insert(body["status"].as_str().expect("status").to_owned());
    }
    let all_reasons: BTreeSet<String> = by_status
        .values()
        .flat_map(|(reasons, _)| reasons.iter().cloned())
        .collect();
    let documented_reasons: BTreeSet<String> = schemas["Reason"]["enum"]
        .as_array()
        .expect("Reason enum")
        .iter()
        .map(|reason| reason.as_str().expect("string").to_owned())
        .collect();
    assert_eq!(documented_reasons, all_reasons);
    let documented_statuses: BTreeSet<u16> = schemas
        .as_object()
        .expect("schemas")
        .keys()
        .filter_map(|name| name.strip_prefix("Error")?.parse().ok())
        .collect();
    assert_eq!(
        documented_statuses,
        by_status.keys().copied().collect::<BTreeSet<_>>()
    );
    for (status, (reasons, body_statuses)) in &by_status {
        let schema = &schemas[format!("Error{status}")];
        assert_eq!(&enum_of(schema, "reason"), reasons, "Error{status}");
        assert_eq!(&enum_of(schema, "status"), body_statuses, "Error{status}");
    }
}

/// The JSON body the code writes for `error`.
fn error_body(error: ApiError) -> Value {
    let response = error.into_response();
    let body = collect_body(response);
    serde_json::from_slice(&body).expect("an error body is JSON")
}

/// Collects a response body (in-memory: no runtime needed beyond a small one).
fn collect_body(response: axum::response::Response) -> Vec<u8> {
    use http_body_util::BodyExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime
        .block_on(response.into_body().collect())
        .expect("body")
        .to_bytes()
        .to_vec()
}

// Proves every header an error answer sets (other than the content headers) is documented on
// that status's response component (e.g. `Retry-After` on 503, `Connection` on 413), and that
// every operation documenting an error status points at the shared component, so the header
// and reason lists checked above are the ones each route promises.
#[test]
fn error_headers_are_documented_and_routes_share_the_components() {
    let document = document();
    let components = &document["components"]["responses"];
    for error in ApiError::one_of_each() {
        let status = error.status().as_u16();
        let response = error.into_response();
        let documented = &components[format!("Error{status}")]["headers"];
        for name in response.headers().keys() {
            if matches!(name.as_str(), "content-type" | "content-length") {
                continue;
            }
            let found = documented.as_object().is_some_and(|headers| {
                headers
                    .keys()
                    .any(|header| header.eq_ignore_ascii_case(name.as_str()))
            });
            assert!(found, "Error{status} does not document the header {name}");
        }
    }
    for route in Route::ALL {
        let operation = &document["paths"][route.path()][route.method().as_str().to_lowercase()];
        let responses = operation["responses"].as_object().expect("responses");
        for (status, response) in responses {
            let is_error_component =
                response
                    .get("$ref")
                    .and_then(Value::as_str)
                    .is_some_and(|reference| {
                        reference == format!("#/components/responses/Error{status}")
                    });
            let schema_name = resolve(&document, response)["content"]["application/json"]["schema"]
                ["$ref"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if schema_name.starts_with("#/components/schemas/Error") {
                assert!(
                    is_error_component,
                    "{route:?} {status}: use the shared component"
                );
            }
        }
    }
}

// Proves the router serves every route of the table (each answers with something other than
// the router's own 404 `not_found` or 405), that a path outside the table is 404 `not_found`,
// and that `GET /openapi.json` serves this very document as JSON.
#[tokio::test]
async fn the_server_serves_the_table_and_the_document() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let client = client();
    for route in Route::ALL {
        let path = route.path().replace("{user}", "nobody");
        let response = client
            .request(route.method(), format!("{}{path}", server.url()))
            .send()
            .await
            .expect("send");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{route:?}");
        assert!(
            !(status == 404 && body["reason"] == "not_found"),
            "{route:?} is not served"
        );
    }
    let response = client
        .get(format!("{}/not-in-the-table", server.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 404);
    let response = client
        .get(format!("{}/openapi.json", server.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok()),
        Some("application/json")
    );
    let document_served: Value = response.json().await.expect("JSON");
    assert_eq!(document_served, document());
    server.stop().await.expect("stop");
}
