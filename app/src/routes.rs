//! Pure routing table: (method, path) -> endpoint plus its metric label.

use http::Method;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Metrics,
    Token,
    ListDocuments,
    UploadDocument,
    GetDocument(String),
    DeleteDocument(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    /// Carries the `Allow` header value.
    MethodNotAllowed(&'static str),
}

/// Label for unknown paths, so raw client paths never become metric labels.
pub const UNMATCHED: &str = "unmatched";

/// Returns the route template (for metrics/logs) and the match result. The `{id}`
/// segment is only split off here; its format is validated by the handler (-> 404).
pub fn route(method: &Method, path: &str) -> (&'static str, Result<Route, RouteError>) {
    let get_only = |route: Route| {
        if method == Method::GET {
            Ok(route)
        } else {
            Err(RouteError::MethodNotAllowed("GET"))
        }
    };
    match path {
        "/healthz" => ("/healthz", get_only(Route::Healthz)),
        "/readyz" => ("/readyz", get_only(Route::Readyz)),
        "/metrics" => ("/metrics", get_only(Route::Metrics)),
        "/v1/auth/token" => (
            "/v1/auth/token",
            if method == Method::POST {
                Ok(Route::Token)
            } else {
                Err(RouteError::MethodNotAllowed("POST"))
            },
        ),
        "/v1/documents" => (
            "/v1/documents",
            match *method {
                Method::GET => Ok(Route::ListDocuments),
                Method::POST => Ok(Route::UploadDocument),
                _ => Err(RouteError::MethodNotAllowed("GET, POST")),
            },
        ),
        _ => match path.strip_prefix("/v1/documents/") {
            Some(id) if !id.is_empty() && !id.contains('/') => (
                "/v1/documents/{id}",
                match *method {
                    Method::GET => Ok(Route::GetDocument(id.to_owned())),
                    Method::DELETE => Ok(Route::DeleteDocument(id.to_owned())),
                    _ => Err(RouteError::MethodNotAllowed("GET, DELETE")),
                },
            ),
            _ => (UNMATCHED, Err(RouteError::NotFound)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RouteError::*;

    #[test]
    fn table() {
        let id = "0123456789abcdef0123456789abcdef";
        let doc = format!("/v1/documents/{id}");
        let long = format!("/{}", "a".repeat(10_000));
        const TOKEN: &str = "/v1/auth/token";
        const DOCS: &str = "/v1/documents";
        const DOC: &str = "/v1/documents/{id}";
        // (method, path, template, route)
        let cases: Vec<(&str, &str, &str, Result<Route, RouteError>)> = vec![
            ("GET", "/healthz", "/healthz", Ok(Route::Healthz)),
            ("GET", "/readyz", "/readyz", Ok(Route::Readyz)),
            ("GET", "/metrics", "/metrics", Ok(Route::Metrics)),
            ("POST", "/healthz", "/healthz", Err(MethodNotAllowed("GET"))),
            ("POST", "/v1/auth/token", TOKEN, Ok(Route::Token)),
            (
                "GET",
                "/v1/auth/token",
                TOKEN,
                Err(MethodNotAllowed("POST")),
            ),
            ("GET", "/v1/documents", DOCS, Ok(Route::ListDocuments)),
            ("POST", "/v1/documents", DOCS, Ok(Route::UploadDocument)),
            (
                "PUT",
                "/v1/documents",
                DOCS,
                Err(MethodNotAllowed("GET, POST")),
            ),
            ("GET", &doc, DOC, Ok(Route::GetDocument(id.into()))),
            ("DELETE", &doc, DOC, Ok(Route::DeleteDocument(id.into()))),
            ("PATCH", &doc, DOC, Err(MethodNotAllowed("GET, DELETE"))),
            // Malformed ids still reach the handler, which answers 404 like a missing document.
            (
                "GET",
                "/v1/documents/..",
                DOC,
                Ok(Route::GetDocument("..".into())),
            ),
            (
                "GET",
                "/v1/documents/%2e%2e",
                DOC,
                Ok(Route::GetDocument("%2e%2e".into())),
            ),
            ("GET", "/v1/documents/", UNMATCHED, Err(NotFound)),
            (
                "GET",
                "/v1/documents/../etc/passwd",
                UNMATCHED,
                Err(NotFound),
            ),
            ("GET", "/v1/documents/a/b", UNMATCHED, Err(NotFound)),
            ("GET", "/v1/documents//", UNMATCHED, Err(NotFound)),
            ("GET", "/healthz/", UNMATCHED, Err(NotFound)),
            ("GET", "//healthz", UNMATCHED, Err(NotFound)),
            ("GET", "/HEALTHZ", UNMATCHED, Err(NotFound)),
            ("GET", "/", UNMATCHED, Err(NotFound)),
            ("GET", "", UNMATCHED, Err(NotFound)),
            ("GET", "/healthz\0", UNMATCHED, Err(NotFound)),
            ("GET", "/v1/döcuments", UNMATCHED, Err(NotFound)),
            ("GET", &long, UNMATCHED, Err(NotFound)),
        ];
        for (method, path, template, want) in cases {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(route(&method, path), (template, want), "{method} {path:?}");
        }
    }
}
