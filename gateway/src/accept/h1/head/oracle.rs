//! pingora's real HTTP/1 request reader (the one `process_new_http` runs next) over
//! in-memory bytes: the oracle our head reader is checked against, by the unit tests
//! and the `head` fuzz target. Not used on the request path.

/// Bytes pingora read as the request head, or its refusal.
pub async fn pingora_reads(bytes: &[u8]) -> Result<usize, String> {
    let stream = Box::new(std::io::Cursor::new(bytes.to_vec()));
    let mut session = pingora::protocols::http::v1::server::HttpSession::new(stream);
    match session.read_request().await {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err("no request".into()),
        Err(e) => Err(e.to_string()),
    }
}
