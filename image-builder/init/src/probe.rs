//! `atlas-init probe URL`: the health probe the installer runs inside a container through
//! `incus exec`, so that checking a service needs nothing but the Incus API: no route from
//! the installer to the container (remote servers, cluster members, hosts whose installer runs
//! with no network at all) and no tool in the image (minimal images have no shell or wget).
//!
//! - `http://HOST:PORT/PATH`: an HTTP/1.0 GET (so no chunked answer); healthy on 2xx.
//! - `tcp://HOST:PORT`: the connection is accepted.
//! - `https://HOST:PORT/...`: a TLS 1.2 ClientHello is answered with a ServerHello. The
//!   handshake is not completed: that would take a TLS stack in every image's PID 1 for a
//!   check that adds little (a service listens on TLS only once its keys and certificates
//!   are loaded; step-ca, for one, exits when it cannot decrypt its key).
//!
//! One line on stdout says what was seen; exit status 0 healthy, 1 not healthy, 2 usage.
//!
//! `atlas-init fetch http://HOST:PORT/PATH` is the same GET, for the few reads the installer
//! needs from a service's API (Alertmanager's alerts for `status`): on 2xx the body alone
//! goes to stdout (at most [`MAX_BODY`]); otherwise one line says why, with exit status 1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// The status line and headers of any health answer fit; the body is not read.
const MAX_HEAD: usize = 16 * 1024;

/// A body `fetch` hands over whole; larger answers are refused, not cut (a cut JSON document
/// would only fail later, less clearly).
pub const MAX_BODY: usize = 8 * 1024 * 1024;

pub const EXIT_UNHEALTHY: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Http {
        addr: String,
        host: String,
        path: String,
    },
    Tls {
        addr: String,
    },
    Tcp {
        addr: String,
    },
}

/// Runs the probe named by `args` (what follows `probe`): prints the outcome, returns the
/// exit status. The outcome goes to stdout: that is what `incus exec` hands the installer.
#[allow(clippy::print_stdout)]
pub fn main(args: &[String]) -> u8 {
    let target = match args {
        [url] => parse(url),
        _ => Err(
            "usage: atlas-init probe http://HOST:PORT/PATH | https://HOST:PORT | tcp://HOST:PORT"
                .into(),
        ),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            println!("{e}");
            return EXIT_USAGE;
        }
    };
    match run(&target) {
        Ok(seen) => {
            println!("{seen}");
            0
        }
        Err(why) => {
            println!("{why}");
            EXIT_UNHEALTHY
        }
    }
}

/// `atlas-init fetch URL`: the body of a 2xx answer on stdout, as bytes.
pub fn fetch_main(args: &[String]) -> u8 {
    let mut out = std::io::stdout().lock();
    let target = match args {
        [url] => parse(url),
        _ => Err("usage: atlas-init fetch http://HOST:PORT/PATH".into()),
    };
    let (addr, host, path) = match target {
        Ok(Target::Http { addr, host, path }) => (addr, host, path),
        Ok(_) => {
            let _ = writeln!(out, "fetch takes an http:// URL");
            return EXIT_USAGE;
        }
        Err(e) => {
            let _ = writeln!(out, "{e}");
            return EXIT_USAGE;
        }
    };
    match http_body(&addr, &host, &path) {
        Ok(body) => match out.write_all(&body).and_then(|()| out.flush()) {
            Ok(()) => 0,
            Err(_) => EXIT_UNHEALTHY,
        },
        Err(why) => {
            let _ = writeln!(out, "{why}");
            EXIT_UNHEALTHY
        }
    }
}

pub fn parse(url: &str) -> Result<Target, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?}: expected SCHEME://HOST:PORT[/PATH]"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !has_port {
        return Err(format!("{url:?}: the address needs a host and a port"));
    }
    let addr = authority.to_string();
    match scheme {
        "http" => Ok(Target::Http {
            host: authority.to_string(),
            addr,
            path: path.to_string(),
        }),
        "https" => Ok(Target::Tls { addr }),
        "tcp" => Ok(Target::Tcp { addr }),
        other => Err(format!(
            "{url:?}: unknown scheme {other:?} (http, https or tcp)"
        )),
    }
}

pub fn run(target: &Target) -> Result<String, String> {
    match target {
        Target::Tcp { addr } => connect(addr).map(|_| format!("{addr} accepts connections")),
        Target::Http { addr, host, path } => http_get(addr, host, path),
        Target::Tls { addr } => tls_hello(addr),
    }
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: cannot resolve: {e}"))?
        .collect();
    let mut last = format!("{addr}: no address");
    for a in resolved {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                s.set_write_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) => last = format!("TCP connect {a}: {e}"),
        }
    }
    Err(last)
}

fn http_get(addr: &str, host: &str, path: &str) -> Result<String, String> {
    let mut s = connect(addr)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: atlas-init-probe\r\nAccept: */*\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("GET http://{addr}{path}: sending: {e}"))?;
    let head = read_head(&mut s).map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let status = status_code(&head).ok_or_else(|| {
        format!(
            "GET http://{addr}{path}: not an HTTP answer: {}",
            first_line(&head)
        )
    })?;
    if (200..300).contains(&status) {
        Ok(format!("GET http://{addr}{path}: HTTP {status}"))
    } else {
        Err(format!("GET http://{addr}{path}: {}", first_line(&head)))
    }
}

/// GET with HTTP/1.0 (the server closes after the body, never chunks it); the body of a 2xx
/// answer, up to its Content-Length when it gives one.
pub fn http_body(addr: &str, host: &str, path: &str) -> Result<Vec<u8>, String> {
    let what = format!("GET http://{addr}{path}");
    let mut s = connect(addr)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: atlas-init-fetch\r\nAccept: application/json\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("{what}: sending: {e}"))?;
    let mut raw = Vec::new();
    s.take((MAX_HEAD + MAX_BODY + 1) as u64)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{what}: reading the answer: {e}"))?;
    split_answer(&raw).map_err(|e| format!("{what}: {e}"))
}

/// Status line, headers and body of a whole HTTP/1.x answer; the body when the status is 2xx.
pub fn split_answer(raw: &[u8]) -> Result<Vec<u8>, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .filter(|&i| i <= MAX_HEAD)
        .ok_or_else(|| match raw.is_empty() {
            true => "the connection closed without an answer".to_string(),
            false => "no complete HTTP header in the answer".to_string(),
        })?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status =
        status_code(&head).ok_or_else(|| format!("not an HTTP answer: {}", first_line(&head)))?;
    let mut body = &raw[end + 4..];
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some_and(|v| !v.eq_ignore_ascii_case("identity")) {
        return Err("the answer is chunked, which an HTTP/1.0 request never asks for".into());
    }
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if body.len() < len {
            return Err(format!(
                "the answer ended after {} of its {len} bytes",
                body.len()
            ));
        }
        body = &body[..len];
    }
    if body.len() > MAX_BODY {
        return Err(format!("the answer is larger than {MAX_BODY} bytes"));
    }
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
        return Err(format!("{}: {}", first_line(&head), text.trim()));
    }
    Ok(body.to_vec())
}

/// Reads until the end of the headers, EOF or the size cap, then the rest of the answer
/// (up to [`MAX_BODY`], discarded): hanging up after the head made servers log a broken pipe
/// on every probe.
fn read_head(s: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < MAX_HEAD && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() => return Err(format!("reading the answer: {e}")),
            Err(_) => break,
        }
    }
    if buf.is_empty() {
        return Err("the connection closed without an answer".into());
    }
    let mut drained = 0;
    while drained < MAX_BODY {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn first_line(head: &str) -> &str {
    let line = head.lines().next().unwrap_or("").trim();
    &line[..line.len().min(200)]
}

pub fn status_code(head: &str) -> Option<u16> {
    let mut parts = first_line(head).split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

fn tls_hello(addr: &str) -> Result<String, String> {
    let mut s = connect(addr)?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    s.write_all(&client_hello(&random32(), sni_name(host)))
        .map_err(|e| format!("TLS {addr}: sending ClientHello: {e}"))?;
    let mut head = [0u8; 7];
    s.read_exact(&mut head)
        .map_err(|e| format!("TLS {addr}: no TLS answer: {e}"))?;
    server_hello_verdict(&head)
        .map(|v| format!("TLS {addr}: {v}"))
        .map_err(|e| format!("TLS {addr}: {e}"))
}

/// SNI carries host names only; servers that choose their certificate by name (Caddy) need it.
fn sni_name(host: &str) -> Option<&str> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host.parse::<std::net::IpAddr>().is_err() && !host.is_empty()).then_some(host)
}

/// Judges the first seven bytes of the answer: record type, version, length, then the first
/// bytes of the record body (handshake message type, or alert level and description).
pub fn server_hello_verdict(head: &[u8; 7]) -> Result<&'static str, String> {
    match (head[0], head[1]) {
        (0x16, 0x03) if head[5] == 0x02 => {
            Ok("the server answered the ClientHello with a ServerHello")
        }
        (0x16, 0x03) => Err(format!("unexpected handshake message {:#04x}", head[5])),
        (0x15, 0x03) => Err(format!(
            "the server refused the handshake with TLS alert {} (level {})",
            head[6], head[5]
        )),
        _ => Err(format!(
            "the answer is not TLS (starts with {:02x?})",
            &head[..]
        )),
    }
}

fn random32() -> [u8; 32] {
    let mut r = [0u8; 32];
    // Not a secret: the handshake is never completed. Zeros if urandom is missing.
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut r);
    }
    r
}

/// A TLS 1.2 ClientHello with the ECDHE AEAD suites and the extensions modern servers (Go's
/// crypto/tls, rustls) require before they answer with a ServerHello.
pub fn client_hello(random: &[u8; 32], sni: Option<&str>) -> Vec<u8> {
    let suites: [u16; 6] = [0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8];
    let groups: [u16; 3] = [0x001d, 0x0017, 0x0018];
    let sigalgs: [u16; 8] = [
        0x0403, 0x0503, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601,
    ];
    let mut ext = Vec::new();
    let mut push_ext = |ty: u16, body: &[u8]| {
        ext.extend_from_slice(&ty.to_be_bytes());
        ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
        ext.extend_from_slice(body);
    };
    if let Some(name) = sni {
        let name = name.as_bytes();
        let mut list = vec![0u8]; // host_name
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
        let mut body = (list.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(&list);
        push_ext(0x0000, &body);
    }
    push_ext(0x000a, &u16_list(&groups));
    push_ext(0x000b, &[1, 0]); // ec_point_formats: uncompressed
    push_ext(0x000d, &u16_list(&sigalgs));
    push_ext(0x0017, &[]); // extended_master_secret
    push_ext(0xff01, &[0]); // renegotiation_info, empty

    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(random);
    body.push(0); // no session id
    let suite_bytes: Vec<u8> = suites.iter().flat_map(|s| s.to_be_bytes()).collect();
    body.extend_from_slice(&(suite_bytes.len() as u16).to_be_bytes());
    body.extend_from_slice(&suite_bytes);
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);

    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

fn u16_list(items: &[u16]) -> Vec<u8> {
    let mut out = ((items.len() * 2) as u16).to_be_bytes().to_vec();
    for i in items {
        out.extend_from_slice(&i.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls_parse_into_targets() {
        assert_eq!(
            parse("http://10.50.0.12:9090/-/ready"),
            Ok(Target::Http {
                addr: "10.50.0.12:9090".into(),
                host: "10.50.0.12:9090".into(),
                path: "/-/ready".into()
            })
        );
        assert_eq!(
            parse("https://10.50.0.15:9000/health"),
            Ok(Target::Tls {
                addr: "10.50.0.15:9000".into()
            })
        );
        assert_eq!(
            parse("tcp://127.0.0.1:1883"),
            Ok(Target::Tcp {
                addr: "127.0.0.1:1883".into()
            })
        );
        assert!(parse("10.0.0.1:80").unwrap_err().contains("SCHEME://"));
        assert!(parse("http://10.0.0.1/x").unwrap_err().contains("port"));
        assert!(
            parse("ftp://10.0.0.1:21")
                .unwrap_err()
                .contains("unknown scheme")
        );
    }

    fn serve_once(answer: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = s.write_all(answer);
        });
        addr
    }

    #[test]
    fn http_probe_wants_a_2xx() {
        let ok = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(
            run(&parse(&format!("http://{ok}/ready")).unwrap()).unwrap(),
            format!("GET http://{ok}/ready: HTTP 200")
        );
        let bad = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready");
        let e = run(&parse(&format!("http://{bad}/ready")).unwrap()).unwrap_err();
        assert!(e.ends_with("HTTP/1.1 503 Service Unavailable"), "{e}");
        let junk = serve_once(b"SSH-2.0-OpenSSH\r\n");
        let e = run(&parse(&format!("http://{junk}/")).unwrap()).unwrap_err();
        assert!(e.contains("not an HTTP answer: SSH-2.0"), "{e}");
    }

    #[test]
    fn fetch_hands_over_the_body_of_a_2xx_only() {
        let ok = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n[1,2,3]trailing");
        assert_eq!(http_body(&ok, &ok, "/api/v2/alerts").unwrap(), b"[1,2,3]");
        let closed = serve_once(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[]");
        assert_eq!(http_body(&closed, &closed, "/").unwrap(), b"[]");
        let bad = serve_once(b"HTTP/1.1 400 Bad Request\r\n\r\n{\"message\":\"bad filter\"}");
        let e = http_body(&bad, &bad, "/").unwrap_err();
        assert!(
            e.contains("400 Bad Request") && e.contains("bad filter"),
            "{e}"
        );
        let short = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[1,");
        let e = http_body(&short, &short, "/").unwrap_err();
        assert!(e.contains("after 3 of its 10 bytes"), "{e}");
        let chunked = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n",
        );
        let e = http_body(&chunked, &chunked, "/").unwrap_err();
        assert!(e.contains("chunked"), "{e}");
    }

    #[test]
    fn nothing_listening_is_unhealthy_with_the_address() {
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        for url in [
            format!("tcp://{addr}"),
            format!("http://{addr}/"),
            format!("https://{addr}/"),
        ] {
            let e = run(&parse(&url).unwrap()).unwrap_err();
            assert!(e.contains(&addr), "{url}: {e}");
        }
    }

    #[test]
    fn tls_verdicts() {
        assert!(server_hello_verdict(&[0x16, 0x03, 0x03, 0, 80, 0x02, 0]).is_ok());
        let e = server_hello_verdict(&[0x15, 0x03, 0x03, 0, 2, 2, 80]).unwrap_err();
        assert!(e.contains("alert 80"), "{e}");
        let e = server_hello_verdict(b"HTTP/1.").unwrap_err();
        assert!(e.contains("not TLS"), "{e}");
        assert_eq!(sni_name("step-ca01"), Some("step-ca01"));
        assert_eq!(sni_name("10.0.0.1"), None);
        assert_eq!(sni_name("[fd00::1]"), None);
    }

    #[test]
    fn client_hello_lengths_are_consistent() {
        let h = client_hello(&[7; 32], Some("localhost"));
        let record_len = u16::from_be_bytes([h[3], h[4]]) as usize;
        assert_eq!(record_len, h.len() - 5);
        let hs_len = u32::from_be_bytes([0, h[6], h[7], h[8]]) as usize;
        assert_eq!(hs_len, h.len() - 9);
        assert_eq!(h[5], 0x01);
    }
}
