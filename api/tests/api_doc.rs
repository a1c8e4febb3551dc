//! `docs/API.md` is the product's API reference and `/openapi.json` the machine-readable one:
//! every route the page lists is in the OpenAPI document, and the other way round.

use std::collections::BTreeSet;

/// `(METHOD, path)` of every route-table row of the served part of `docs/API.md` (the part
/// before "Not yet served", which lists routes designed but not built).
fn documented_routes() -> BTreeSet<(String, String)> {
    let page = include_str!("../../docs/API.md");
    let served = page
        .split("\n## Not yet served")
        .next()
        .expect("split yields a first part");
    let mut routes = BTreeSet::new();
    for line in served.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // A route row: | METHOD | `path` | ...
        if cells.len() < 3 {
            continue;
        }
        let method = cells[1];
        if !matches!(method, "GET" | "PUT" | "POST" | "DELETE" | "PATCH") {
            continue;
        }
        let path = cells[2].trim_matches('`');
        let path = path.split('?').next().unwrap_or(path);
        routes.insert((method.to_string(), path.to_string()));
    }
    routes
}

#[test]
fn every_route_in_docs_api_md_is_in_openapi_and_the_other_way_round() {
    let documented = documented_routes();
    let served = raftflow_api::openapi_routes();
    assert!(
        documented.len() >= 20,
        "the parser found only {documented:?} in docs/API.md"
    );
    let only_doc: Vec<_> = documented.difference(&served).collect();
    let only_openapi: Vec<_> = served.difference(&documented).collect();
    assert!(
        only_doc.is_empty() && only_openapi.is_empty(),
        "docs/API.md lists routes /openapi.json lacks: {only_doc:?}; \
         /openapi.json has routes docs/API.md lacks: {only_openapi:?}"
    );
}

#[test]
fn the_route_parser_sees_a_missing_route() {
    // The check above must be able to fail: a page without one of the routes differs.
    let mut documented = documented_routes();
    assert!(documented.remove(&("GET".to_string(), "/healthz".to_string())));
    assert_ne!(documented, raftflow_api::openapi_routes());
}
