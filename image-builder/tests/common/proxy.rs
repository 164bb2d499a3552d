//! A recording HTTP/1.1 proxy in front of the real registry, for what a registry cannot be
//! made to do: count the requests a pull makes, see Range headers, corrupt one blob's bytes
//! in flight, or behave like a registry without Range support. Everything else is forwarded
//! unchanged to 127.0.0.1:5000.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
}

#[derive(Default)]
pub struct Faults {
    /// Flip a byte in GET responses for this blob or manifest digest ("sha256:...").
    pub corrupt_blob: Option<String>,
    /// Drop Range headers, like a registry that cannot serve partial content.
    pub ignore_range: bool,
    /// Send only the first half of GET responses for this blob digest, then hang up.
    pub cut_blob: Option<String>,
}

pub struct Proxy {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub faults: Arc<Mutex<Faults>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Mutex::new(Faults::default()));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let upstream = upstream.to_owned();
        let (s2, f2) = (seen.clone(), faults.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (client, upstream, seen, faults) =
                    (client.clone(), upstream.clone(), s2.clone(), f2.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, client, upstream, seen, faults).await;
                });
            }
        });
        Proxy {
            addr,
            seen,
            faults,
            task,
        }
    }

    pub fn blob_gets(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == "GET" && s.path.contains("/blobs/"))
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

async fn serve(
    conn: TcpStream,
    client: reqwest::Client,
    upstream: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    faults: Arc<Mutex<Faults>>,
) -> std::io::Result<()> {
    let (r, mut w) = conn.into_split();
    let mut r = BufReader::new(r);
    loop {
        let Some(head) = atlas_test_support::http::read_head(&mut r).await? else {
            return Ok(());
        };
        let content_length = head.content_length();
        let atlas_test_support::http::Head {
            method,
            target: path,
            headers,
        } = head;
        let mut body = vec![0u8; content_length];
        r.read_exact(&mut body).await?;

        let range = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("range"))
            .map(|(_, v)| v.clone());
        let (ignore_range, corrupt, cut) = {
            let f = faults.lock().unwrap();
            (f.ignore_range, f.corrupt_blob.clone(), f.cut_blob.clone())
        };
        let mut req = client.request(method.parse().unwrap(), format!("http://{upstream}{path}"));
        for (k, v) in &headers {
            let skip = ["host", "content-length", "connection"]
                .iter()
                .any(|s| k.eq_ignore_ascii_case(s))
                || (ignore_range && k.eq_ignore_ascii_case("range"));
            if !skip {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let resp = req.body(body).send().await.map_err(std::io::Error::other)?;
        let status = resp.status();
        seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: path.clone(),
            range,
            status: status.as_u16(),
        });
        let resp_headers = resp.headers().clone();
        let mut data = resp.bytes().await.map_err(std::io::Error::other)?.to_vec();
        if method == "GET"
            && corrupt.is_some_and(|d| {
                path.ends_with(&format!("/blobs/{d}")) || path.ends_with(&format!("/manifests/{d}"))
            })
            && !data.is_empty()
        {
            let last = data.len() - 1;
            data[last] ^= 0xff;
        }
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        for (k, v) in &resp_headers {
            let k = k.as_str();
            if k == "transfer-encoding"
                || k == "connection"
                || (k == "content-length" && method != "HEAD")
            {
                continue;
            }
            let v = v.to_str().unwrap_or("");
            // Upload locations point at the registry; keep the client talking to us.
            let v = if k == "location" {
                v.replace(&upstream, &w_addr(&w))
            } else {
                v.to_owned()
            };
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if method != "HEAD" {
            head.push_str(&format!("content-length: {}\r\n", data.len()));
        }
        head.push_str("\r\n");
        w.write_all(head.as_bytes()).await?;
        if method == "GET" && cut.is_some_and(|d| path.ends_with(&format!("/blobs/{d}"))) {
            w.write_all(&data[..data.len() / 2]).await?;
            w.flush().await?;
            return Ok(());
        }
        if method != "HEAD" {
            w.write_all(&data).await?;
        }
        w.flush().await?;
    }
}

fn w_addr(w: &tokio::net::tcp::OwnedWriteHalf) -> String {
    w.local_addr().map(|a| a.to_string()).unwrap_or_default()
}
