//! The OpenAPI document, generated from the handlers' annotations.
//!
//! `docs/openapi.json` is the committed copy; a test fails when it is stale
//! (`UPDATE_OPENAPI=1 cargo test -p waping-gateway openapi` rewrites it), and
//! `.ci/schemathesis.sh` fuzzes a running gateway against it.

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The whole document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = super::routes::Paths::openapi();
    doc.info = utoipa::openapi::InfoBuilder::new()
        .title("waping-gateway HTTP API")
        .version("1")
        .description(Some(
            "Control plane and send API of waping-gateway. Authenticate with `Authorization: Bearer <key>`: \
             a workspace API key (`wpk_…`) for workspace routes, the node-admin token for `/v1/admin`. \
             Errors carry the catalogue code shared with the QUIC protocol; every response echoes `x-request-id`.",
        ))
        .build();
    let comps = doc.components.get_or_insert_with(Default::default);
    comps.add_security_scheme(
        "api_key",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("wpk_<id>_<secret>")
                .build(),
        ),
    );
    comps.add_security_scheme(
        "admin_token",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    doc
}

/// Pretty JSON of [`document`], as committed.
pub fn json() -> String {
    let mut s = document().to_pretty_json().expect("OpenAPI serialises");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn committed_openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let now = super::json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &now).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == now,
            "docs/openapi.json is stale; run `UPDATE_OPENAPI=1 cargo test -p waping-gateway openapi` and commit it"
        );
    }

    #[test]
    fn access_table_and_openapi_list_the_same_routes() {
        let doc = super::document();
        let mut documented = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            for (m, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
            ] {
                if op.is_some() {
                    documented.insert((m.to_string(), path.clone()));
                }
            }
        }
        let table: BTreeSet<_> = super::super::routes::ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(
            table.len(),
            super::super::routes::ROUTES.len(),
            "duplicate rows in ROUTES"
        );
        assert_eq!(documented, table, "ROUTES and the OpenAPI document disagree");
    }
}
