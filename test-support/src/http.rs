//! The head of an HTTP/1.1 request, as the tests' small servers (the token service of the
//! auth registry, the fault-injecting registry proxy) read it off a connection.

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

/// Request line and headers (names and values trimmed, in order).
pub struct Head {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// Every value of header `name` (any case), in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Content-Length` (the last one given), 0 when absent or not a number.
    pub fn content_length(&self) -> usize {
        self.values("content-length")
            .last()
            .map_or(0, |v| v.parse().unwrap_or(0))
    }
}

/// Reads one request's head; `None` when the peer closed the connection before a request
/// line. The body, if any, is left for the caller.
pub async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok(Some(Head {
        method,
        target,
        headers,
    }))
}
