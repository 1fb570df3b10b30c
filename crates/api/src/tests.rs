//! The document against the router: every route served is described, every description is
//! served, and the document holds together.

use std::collections::BTreeSet;

use serde_json::Value;

use super::*;

/// Every (method, path) the router serves, read from its `Debug` output: axum has no public
/// route listing, but its `Debug` names each route's path and the methods it allows (the
/// `allow` header it would send). `HEAD` comes with `GET` and is left out.
fn served(router: &Router<Arc<Platform>>) -> BTreeSet<(String, String)> {
    let debug = format!("{router:?}");
    // The main path router comes first; the fallback router after it serves only fallbacks.
    let main = debug
        .split("fallback_router:")
        .next()
        .expect("a Router's Debug output names its fallback router");
    let methods = regex::Regex::new(r#"RouteId\((\d+)\): MethodRouter\(MethodRouter \{[^}]*?allow_header: Bytes\(b"([A-Z,]*)"\)"#)
        .unwrap();
    let paths = regex::Regex::new(r#"RouteId\((\d+)\): "([^"]*)""#).unwrap();
    let allowed: std::collections::HashMap<&str, &str> = methods
        .captures_iter(main)
        .map(|c| (c.get(1).unwrap().as_str(), c.get(2).unwrap().as_str()))
        .collect();
    let mut served = BTreeSet::new();
    for c in paths.captures_iter(main) {
        let (id, path) = (&c[1], &c[2]);
        let methods = allowed
            .get(id)
            .unwrap_or_else(|| panic!("no methods found for route {path}"));
        for method in methods.split(',').filter(|m| *m != "HEAD") {
            served.insert((method.to_lowercase(), path.to_owned()));
        }
    }
    served
}

fn documented(document: &OpenApi) -> BTreeSet<(String, String)> {
    let json = serde_json::to_value(document).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in json["paths"].as_object().unwrap() {
        for method in [
            "get", "put", "post", "delete", "patch", "options", "head", "trace",
        ] {
            if item.get(method).is_some() {
                documented.insert((method.to_owned(), path.clone()));
            }
        }
    }
    documented
}

#[test]
fn every_route_served_is_in_the_document_and_back() {
    let (router, document) = stateless();
    let served = served(&router);
    // Guards the reading above: if axum's Debug output changed, this fails instead of
    // comparing two empty sets.
    assert!(served.len() >= 25, "read only {served:?} from the router");
    // Swagger UI (a page for people and its files) is the one thing served but not described.
    let page = |p: &str| p == doc::PAGE_PATH || p.starts_with(&format!("{}/", doc::PAGE_PATH));
    let api: BTreeSet<_> = served.iter().filter(|(_, p)| !page(p)).cloned().collect();
    let documented = documented(&document);
    let missing: Vec<_> = api.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "served but not in the document: {missing:?}"
    );
    let extra: Vec<_> = documented.difference(&api).collect();
    assert!(
        extra.is_empty(),
        "in the document but not served: {extra:?}"
    );
    assert!(served.contains(&("get".into(), format!("{}/", doc::PAGE_PATH))));
    assert!(documented.contains(&("get".into(), doc::DOCUMENT_PATH.into())));
}

/// Every `$ref` in the document names a component that is there.
fn refs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                found.push(r.clone());
            }
            map.values().for_each(|v| refs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[test]
fn the_document_holds_together() {
    let json = serde_json::to_value(openapi()).unwrap();
    assert_eq!(json["openapi"], "3.1.0");
    let mut found = Vec::new();
    refs(&json, &mut found);
    assert!(!found.is_empty());
    for r in found {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(
            json["components"]["schemas"].get(name).is_some(),
            "{r} is referenced but not in the document"
        );
    }
    let mut ids = BTreeSet::new();
    for (path, item) in json["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_owned()),
                "{method} {path}: operationId {id:?} twice"
            );
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{method} {path}: no tag"
            );
            assert!(
                op["description"].as_str().is_some_and(|d| !d.is_empty())
                    || op["summary"].as_str().is_some_and(|d| !d.is_empty()),
                "{method} {path}: not described"
            );
            for (status, response) in op["responses"].as_object().unwrap() {
                assert!(
                    response["headers"].get("x-request-id").is_some(),
                    "{method} {path} {status}: no x-request-id"
                );
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(
                        op["responses"].get(status).is_some(),
                        "{method} {path}: no {status}"
                    );
                }
            }
            // A route that needs a credential documents its 401: every route naming a shopper
            // scheme (shopper routes answer 401 in jwt and signed-header modes), and every
            // route whose only way in is the admin token.
            let requirements: Vec<&Value> = op
                .get("security")
                .and_then(Value::as_array)
                .map(|r| r.iter().collect())
                .unwrap_or_default();
            let names = |r: &&Value| r.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
            let shopper = requirements
                .iter()
                .filter_map(names)
                .flatten()
                .any(|n| n.starts_with("shopper_"));
            let optional = requirements
                .iter()
                .any(|r| r.as_object().is_some_and(|o| o.is_empty()));
            if shopper || (!requirements.is_empty() && !optional) {
                assert!(
                    op["responses"].get("401").is_some(),
                    "{method} {path}: no 401"
                );
            }
        }
    }
}

/// The enumerations and limits the document states are the ones the handlers check.
#[test]
fn the_document_states_the_checked_limits() {
    let json = serde_json::to_value(openapi()).unwrap();
    let schemas = &json["components"]["schemas"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(strings(&schemas["Gender"]["enum"]), admin::GENDERS);
    assert_eq!(strings(&schemas["AgeGroup"]["enum"]), admin::AGE_GROUPS);
    let spec = &schemas["CampaignSpec"]["properties"];
    assert_eq!(
        spec["capacity"]["maximum"],
        firstcome_core::campaign::MAX_CAPACITY
    );
    assert_eq!(
        spec["chunk_size"]["maximum"],
        firstcome_core::campaign::MAX_CHUNK_SIZE
    );
    let plugin = &schemas["PluginSpec"]["properties"];
    assert_eq!(
        plugin["timeout_ms"]["maximum"],
        firstcome_core::plugin_spec::MAX_TIMEOUT_MS
    );
    assert_eq!(
        plugin["memory_mb"]["maximum"],
        firstcome_core::plugin_spec::MAX_MEMORY_MB
    );
    assert_eq!(
        schemas["UserId"]["pattern"],
        firstcome_core::user::USER_ID_PATTERN
    );
    assert_eq!(
        schemas["BulkBody"]["properties"]["users"]["maxItems"],
        admin::MAX_BULK_USERS
    );
}

/// Each route is on the plane meant for it: a new route lands on both planes only by being
/// added to the list below.
#[test]
fn every_route_belongs_to_its_plane() {
    let (router, _) = stateless();
    let mut both = BTreeSet::new();
    for (_, path) in served(&router) {
        let (admin, public) = (
            super::headers::admin_only(&path),
            super::headers::public_only(&path),
        );
        assert!(!(admin && public), "{path} claimed by both planes alone");
        if path.starts_with("/api/v1/admin") || path == "/metrics" || path.starts_with("/api/docs")
        {
            assert!(admin, "{path} must be on the admin plane only");
        }
        if !admin && !public {
            both.insert(path);
        }
    }
    let expected: BTreeSet<String> = [
        "/api/v1/campaigns",
        "/api/v1/campaigns/{campaign_id}",
        "/api/v1/campaigns/{campaign_id}/stats",
        "/api/v1/campaigns/{campaign_id}/stats/stream",
        "/health/live",
        "/health/ready",
    ]
    .map(String::from)
    .into();
    assert_eq!(both, expected);
}
