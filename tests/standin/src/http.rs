//! A deliberately tiny HTTP/1.1 server: one request per connection (`Connection: close`),
//! which every client we meet (Prometheus, curl, Caddy, Incus' Loki client) copes with.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body.into())
    }
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::new(status, "application/json", value.to_string())
    }
    pub fn empty(status: u16) -> Self {
        Self::new(status, "text/plain; charset=utf-8", Vec::new())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    Io(String),
    BadRequest(&'static str),
    TooLarge,
}

impl From<io::Error> for ParseError {
    fn from(e: io::Error) -> Self {
        ParseError::Io(e.to_string())
    }
}

/// Reads one request: request line, headers, then a body by Content-Length or chunked.
pub fn read_request(stream: impl Read) -> Result<Request, ParseError> {
    let mut r = BufReader::new(stream.take((MAX_HEAD + MAX_BODY + 1) as u64));
    let mut line = String::new();
    let mut head_len = 0;
    read_line(&mut r, &mut line, &mut head_len)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadRequest("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ParseError::BadRequest("only HTTP/1.x is spoken here"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
    };
    loop {
        line.clear();
        read_line(&mut r, &mut line, &mut head_len)?;
        if line.is_empty() {
            break;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(ParseError::BadRequest("malformed header"));
        };
        req.headers
            .push((k.trim().to_string(), v.trim().to_string()));
    }
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        req.body = read_chunked(&mut r, &mut head_len)?;
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| ParseError::BadRequest("bad Content-Length"))?;
        if len > MAX_BODY {
            return Err(ParseError::TooLarge);
        }
        req.body = vec![0; len];
        r.read_exact(&mut req.body)?;
    }
    Ok(req)
}

/// One CRLF- (or LF-) terminated line without its terminator; EOF before it is an error.
fn read_line(r: &mut impl BufRead, line: &mut String, total: &mut usize) -> Result<(), ParseError> {
    let n = r.read_line(line)?;
    *total += n;
    if *total > MAX_HEAD {
        return Err(ParseError::TooLarge);
    }
    if n == 0 || !line.ends_with('\n') {
        return Err(ParseError::BadRequest("connection closed mid-request"));
    }
    let trimmed = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(trimmed);
    Ok(())
}

fn read_chunked(r: &mut impl BufRead, head_len: &mut usize) -> Result<Vec<u8>, ParseError> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        read_line(r, &mut line, head_len)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| ParseError::BadRequest("bad chunk size"))?;
        if size == 0 {
            // Trailers until the empty line.
            loop {
                line.clear();
                read_line(r, &mut line, head_len)?;
                if line.is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(ParseError::TooLarge);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        line.clear();
        read_line(r, &mut line, head_len)?;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

pub fn write_response(mut w: impl Write, resp: &Response, head_only: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nServer: atlas-standin\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status)
    );
    if resp.status != 204 {
        out.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            resp.content_type,
            resp.body.len()
        ));
    }
    out.push_str("\r\n");
    w.write_all(out.as_bytes())?;
    if !head_only && resp.status != 204 {
        w.write_all(&resp.body)?;
    }
    w.flush()
}

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Reads one request from `stream`, answers it and returns; errors are answered when the
/// peer is still there to hear them.
pub fn handle(mut stream: impl Read + Write, handler: &Handler) -> io::Result<()> {
    let resp = match read_request(&mut stream) {
        Ok(req) => {
            let resp = handler(&req);
            return write_response(&mut stream, &resp, req.method == "HEAD");
        }
        Err(ParseError::Io(_)) => return Ok(()),
        Err(ParseError::BadRequest(why)) => Response::text(400, format!("{why}\n")),
        Err(ParseError::TooLarge) => Response::text(413, "request too large\n"),
    };
    write_response(&mut stream, &resp, false)
}

/// How connections on a listener become byte streams: plain TCP or TLS.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(Arc<rustls::ServerConfig>),
}

/// Accepts forever, one thread per connection.
pub fn serve(listener: TcpListener, transport: Transport, handler: Handler) {
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        let handler = handler.clone();
        let transport = transport.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve_one(tcp, &transport, &handler) {
                // Scanners and health probes hang up early; that is not worth more than a line.
                let _ = writeln!(io::stderr(), "atlas-standin: connection: {e}");
            }
        });
    }
}

fn serve_one(tcp: TcpStream, transport: &Transport, handler: &Handler) -> io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(15)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(15)))?;
    match transport {
        Transport::Plain => handle(&tcp, handler),
        Transport::Tls(cfg) => {
            let conn = rustls::ServerConnection::new(cfg.clone()).map_err(io::Error::other)?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            handle(&mut tls, handler)?;
            tls.conn.send_close_notify();
            tls.flush()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_with_content_length_body() {
        let raw =
            b"POST /loki/api/v1/push?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let req = read_request(&raw[..]).unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/loki/api/v1/push");
        assert_eq!(req.query, "x=1");
        assert_eq!(req.header("content-length"), Some("5"));
        assert_eq!(req.body, b"hello");
    }

    #[test]
    fn parses_chunked_body_with_trailers() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nT: 1\r\n\r\n";
        assert_eq!(read_request(&raw[..]).unwrap().body, b"Wikipedia");
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert_eq!(
            read_request(&b"NONSENSE\r\n\r\n"[..]),
            Err(ParseError::BadRequest("malformed request line"))
        );
        assert_eq!(
            read_request(&b"GET / HTTP/1.1\r\nHost: a\r\n"[..]),
            Err(ParseError::BadRequest("connection closed mid-request"))
        );
        assert!(matches!(
            read_request(&b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"[..]),
            Err(ParseError::Io(_))
        ));
        let huge = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(read_request(huge.as_bytes()), Err(ParseError::TooLarge));
    }

    #[test]
    fn writes_response_with_length_and_no_body_for_204_or_head() {
        let mut out = Vec::new();
        write_response(&mut out, &Response::text(200, "ok\n"), false).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"), "{s}");
        assert!(s.contains("Content-Length: 3\r\n"));
        assert!(s.ends_with("\r\n\r\nok\n"));

        let mut out = Vec::new();
        write_response(&mut out, &Response::empty(204), false).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 204 No Content\r\n") && s.ends_with("\r\n\r\n"));
        assert!(!s.contains("Content-Length"));

        let mut out = Vec::new();
        write_response(&mut out, &Response::text(200, "ok\n"), true).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("Content-Length: 3\r\n\r\n")
        );
    }

    #[test]
    fn serves_over_real_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(|r: &Request| Response::text(200, r.path.clone()));
        std::thread::spawn(move || serve(listener, Transport::Plain, handler));
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK"), "{s}");
        assert!(s.ends_with("/ready"));
    }
}
