//! Connecting: unix socket discovery, and HTTPS to a remote with a client certificate and the
//! server pinned by the SHA-256 fingerprint of its certificate.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use super::client::{Client, Endpoint};
use super::error::IncusError;
use crate::config::IncusConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The sockets tried, in order, when none is configured.
pub fn socket_candidates(env: impl Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(s) = env("INCUS_SOCKET").filter(|s| !s.is_empty()) {
        out.push(PathBuf::from(s));
    }
    if let Some(d) = env("INCUS_DIR").filter(|s| !s.is_empty()) {
        out.push(PathBuf::from(d).join("unix.socket"));
    }
    out.push(PathBuf::from("/run/incus/unix.socket"));
    out.push(PathBuf::from("/var/lib/incus/unix.socket"));
    out
}

/// Picks the socket: an explicit path is the only one tried; otherwise the first existing
/// candidate of [`socket_candidates`].
pub fn discover_socket(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, IncusError> {
    let tried = match explicit.filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => vec![p.to_path_buf()],
        None => socket_candidates(env),
    };
    match tried.iter().find(|p| p.exists()) {
        Some(p) => Ok(p.clone()),
        None => Err(IncusError::NoSocket { tried }),
    }
}

/// Connection to a remote Incus over HTTPS.
#[derive(Clone)]
pub struct RemoteSpec {
    /// `https://host:8443`
    pub url: String,
    /// PEM of the client certificate Incus trusts.
    pub client_cert_pem: String,
    /// PEM of its private key. Never printed.
    pub client_key_pem: String,
    /// SHA-256 of the server certificate's DER, hex (colons allowed).
    pub server_fingerprint: String,
}

impl std::fmt::Debug for RemoteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSpec")
            .field("url", &self.url)
            .field("server_fingerprint", &self.server_fingerprint)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client on the local daemon's unix socket (`explicit`, else discovered). Sends nothing;
    /// the first call reports an unreachable daemon.
    pub fn unix(explicit: Option<&Path>) -> Result<Client, IncusError> {
        let path = discover_socket(explicit, |k| std::env::var_os(k))?;
        Client::unix_at(&path)
    }

    /// A client on exactly this socket, without checking it exists.
    pub fn unix_at(path: &Path) -> Result<Client, IncusError> {
        let http = reqwest::Client::builder()
            .unix_socket(path)
            .tls_backend_preconfigured(unused_tls()?)
            .connect_timeout(CONNECT_TIMEOUT)
            // incusd's unix listener (6.0.4 and later) reads the first bytes of every new
            // connection inside its accept loop, to tell STARTTLS from plain HTTP. A connection
            // that is open but has sent nothing stops it from accepting any other client, its
            // own LXC hooks included, which then time out after 30 s ("context deadline
            // exceeded" on start and stop). The pool opens exactly such connections: when a
            // busy connection frees up while a new one is still being dialled, the new one is
            // parked idle, unused. So no connection is kept once its response is read.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| IncusError::Invalid(format!("building the HTTP client: {e}")))?;
        let base = Url::parse("http://incus").map_err(|e| IncusError::Invalid(e.to_string()))?;
        Ok(Client::from_parts(
            http,
            base,
            Endpoint::Unix {
                path: path.to_path_buf(),
            },
        ))
    }

    /// A client on a remote Incus over HTTPS, authenticating with a client certificate and
    /// accepting only the server certificate with the pinned fingerprint.
    pub fn remote(spec: &RemoteSpec) -> Result<Client, IncusError> {
        let base = Url::parse(&spec.url)
            .map_err(|e| IncusError::Tls(format!("remote url {:?}: {e}", spec.url)))?;
        if base.scheme() != "https" {
            return Err(IncusError::Tls(format!(
                "remote url {:?} must start with https://",
                spec.url
            )));
        }
        let tls = tls_config(spec)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| IncusError::Tls(format!("building the HTTPS client: {e}")))?;
        Ok(Client::from_parts(
            http,
            base,
            Endpoint::Remote {
                url: spec.url.clone(),
            },
        ))
    }

    /// The client `atlas.toml` asks for: the remote when set, else the socket; scoped to
    /// `incus.project` (project-less calls such as creating that project are unaffected).
    pub fn from_config(cfg: &IncusConfig) -> Result<Client, IncusError> {
        let client = match &cfg.remote {
            Some(r) => Client::remote(&RemoteSpec {
                url: r.url.clone(),
                client_cert_pem: read_pem(&r.client_cert, "incus.remote.client_cert")?,
                client_key_pem: read_pem(&r.client_key, "incus.remote.client_key")?,
                server_fingerprint: r.server_fingerprint.clone(),
            })?,
            None => {
                let explicit = Some(Path::new(&cfg.socket)).filter(|p| !p.as_os_str().is_empty());
                Client::unix(explicit)?
            }
        };
        client.set_request_timeout(Duration::from_secs(cfg.request_timeout));
        Ok(client.in_project(&cfg.project))
    }
}

/// The config holds either the PEM itself or a path to it.
fn read_pem(value: &str, key: &str) -> Result<String, IncusError> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.to_string());
    }
    std::fs::read_to_string(value)
        .map_err(|e| IncusError::Tls(format!("{key}: cannot read {value}: {e}")))
}

/// Parses "ab:cd:..." or "abcd..." into the 32 raw bytes.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], IncusError> {
    let hexed: String = s
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    let bytes = hex::decode(&hexed).map_err(|_| {
        IncusError::Tls(format!(
            "server fingerprint {s:?} is not hex; give the SHA-256 of the server certificate"
        ))
    })?;
    bytes.try_into().map_err(|_| {
        IncusError::Tls(format!(
            "server fingerprint {s:?} is not 32 bytes (SHA-256); see `incus info | grep certificate_fingerprint`"
        ))
    })
}

/// SHA-256 of a certificate's DER, lowercase hex: Incus' certificate fingerprint.
pub fn cert_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The socket speaks plain HTTP, but reqwest still builds a TLS connector; giving it one with
/// our provider keeps the library from depending on a process-wide default provider.
pub(crate) fn unused_tls() -> Result<rustls::ClientConfig, IncusError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| IncusError::Tls(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// The rustls configuration of a remote: our client cert and the pinned server.
pub fn tls_config(spec: &RemoteSpec) -> Result<rustls::ClientConfig, IncusError> {
    let pinned = parse_fingerprint(&spec.server_fingerprint)?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(spec.client_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| IncusError::Tls(format!("client certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(IncusError::Tls(
            "client certificate PEM holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(spec.client_key_pem.as_bytes())
        .map_err(|e| IncusError::Tls(format!("client key PEM: {e}")))?;
    let provider = provider();
    let verifier = Arc::new(PinnedServer {
        fingerprint: pinned,
        provider: provider.clone(),
    });
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IncusError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(|e| {
            IncusError::Tls(format!(
                "client certificate and key do not fit together: {e}"
            ))
        })
}

/// Accepts exactly the server certificate whose SHA-256 matches. Incus servers use
/// self-signed certificates, so there is no chain to check: the pin is the trust.
#[derive(Debug)]
pub struct PinnedServer {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedServer {
    pub fn new(fingerprint: [u8; 32]) -> PinnedServer {
        PinnedServer {
            fingerprint,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate fingerprint {} is not the pinned {}",
                hex::encode(got),
                hex::encode(self.fingerprint)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A failed send: "nobody listens"/"no permission" become [`IncusError::Unreachable`] with a
/// hint; the rest [`IncusError::Transport`] or [`IncusError::Tls`].
pub(crate) fn map_send_error(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    e: &reqwest::Error,
) -> IncusError {
    let io = io_error_in(e);
    let chain = error_chain(e);
    // rustls failures surface as connect errors carrying an InvalidData io::Error; they are
    // about trust, not reachability, so check them first.
    let tls_failure = io.is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
        || chain.contains("not the pinned")
        || chain.to_ascii_lowercase().contains("certificate");
    if tls_failure {
        return IncusError::Tls(format!(
            "{method} {path} to {endpoint}: {chain}. Check `incus.remote.server_fingerprint` \
             (`incus info` on the server shows certificate_fingerprint) and that the server \
             trusts the client certificate"
        ));
    }
    if let Some(io) = io {
        use std::io::ErrorKind::*;
        if matches!(
            io.kind(),
            PermissionDenied | ConnectionRefused | NotFound | ConnectionReset | TimedOut
        ) || e.is_connect()
        {
            return IncusError::Unreachable {
                endpoint: endpoint.to_string(),
                reason: chain,
                hint: unreachable_hint(endpoint, io.kind()),
            };
        }
    }
    if e.is_connect() || e.is_timeout() {
        return IncusError::Unreachable {
            endpoint: endpoint.to_string(),
            reason: chain,
            hint: unreachable_hint(endpoint, std::io::ErrorKind::Other),
        };
    }
    IncusError::Transport {
        endpoint: endpoint.to_string(),
        method: method.to_string(),
        path: path.to_string(),
        message: chain,
    }
}

fn unreachable_hint(endpoint: &Endpoint, kind: std::io::ErrorKind) -> String {
    match (endpoint, kind) {
        (Endpoint::Unix { .. }, std::io::ErrorKind::PermissionDenied) => {
            "No permission on the socket: run as root or as a member of the `incus-admin` group \
             (log in again after `usermod -aG incus-admin $USER`)."
                .to_string()
        }
        (Endpoint::Unix { path }, _) => format!(
            "The socket exists but no daemon answers. Is incusd running? Start it \
             (`systemctl start incus` or `incusd --group incus-admin &`), check with \
             `incus admin waitready`, or point `incus.socket` / INCUS_SOCKET at the right socket \
             (tried {}).",
            path.display()
        ),
        (Endpoint::Remote { url }, _) => format!(
            "Check that {url} is right, that the server listens there (`core.https_address`), \
             and that no firewall is in between."
        ),
        (Endpoint::Other { name }, _) => format!("{name} did not answer."),
    }
}

fn io_error_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| {
            owned
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn candidates_follow_the_documented_order() {
        let c = socket_candidates(env_of(&[("INCUS_SOCKET", "/a/s"), ("INCUS_DIR", "/d")]));
        let want: Vec<PathBuf> = [
            "/a/s",
            "/d/unix.socket",
            "/run/incus/unix.socket",
            "/var/lib/incus/unix.socket",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(c, want);
        assert_eq!(socket_candidates(env_of(&[])).len(), 2);
    }

    #[test]
    fn discovery_picks_the_first_existing_and_reports_all_tried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("unix.socket");
        std::fs::write(&sock, b"").expect("write");
        let d = dir.path().to_str().expect("utf8");
        let pairs = [("INCUS_SOCKET", "/nonexistent/x.socket"), ("INCUS_DIR", d)];
        assert_eq!(discover_socket(None, env_of(&pairs)).expect("found"), sock);

        let missing = Path::new("/nonexistent/atlas/unix.socket");
        let e =
            discover_socket(Some(missing), env_of(&pairs)).expect_err("explicit path is exclusive");
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/atlas/unix.socket") && msg.contains("incusd running"),
            "{msg}"
        );
        assert!(
            !msg.contains("/run/incus"),
            "explicit path must be the only one tried: {msg}"
        );
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hexed = "68e462a4c2beb7b8f14dee3e1a3f5ed84e580396bcb067d65ed110cab5e03734";
        let a = parse_fingerprint(hexed).expect("plain");
        let colons: Vec<String> = hexed
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).expect("colons"), a);
        assert!(
            parse_fingerprint("abcd")
                .expect_err("short")
                .to_string()
                .contains("32 bytes")
        );
        assert!(
            parse_fingerprint("zz")
                .expect_err("hex")
                .to_string()
                .contains("not hex")
        );
    }

    fn self_signed() -> (rcgen::CertifiedKey<rcgen::KeyPair>, Vec<u8>) {
        let ck = rcgen::generate_simple_self_signed(vec!["incus.test".into()]).expect("rcgen");
        let der = ck.cert.der().to_vec();
        (ck, der)
    }

    #[test]
    fn pinned_verifier_accepts_only_the_pinned_certificate() {
        let (_, der) = self_signed();
        let (_, other) = self_signed();
        let pin = parse_fingerprint(&cert_fingerprint(&der)).expect("fp");
        let v = PinnedServer::new(pin);
        let name = ServerName::try_from("incus.test").expect("name");
        let now = UnixTime::now();
        assert!(
            v.verify_server_cert(&CertificateDer::from(der.clone()), &[], &name, &[], now)
                .is_ok()
        );
        let err = v
            .verify_server_cert(&CertificateDer::from(other), &[], &name, &[], now)
            .expect_err("another certificate must be refused");
        assert!(err.to_string().contains("not the pinned"), "{err}");
    }

    #[test]
    fn tls_config_rejects_bad_pem_and_mismatched_key() {
        let (a, der) = self_signed();
        let (b, _) = self_signed();
        let spec = RemoteSpec {
            url: "https://127.0.0.1:8443".into(),
            client_cert_pem: a.cert.pem(),
            client_key_pem: a.signing_key.serialize_pem(),
            server_fingerprint: cert_fingerprint(&der),
        };
        assert!(tls_config(&spec).is_ok());
        let bad = RemoteSpec {
            client_cert_pem: "garbage".into(),
            ..spec.clone()
        };
        assert!(matches!(tls_config(&bad), Err(IncusError::Tls(_))));
        let mismatched = RemoteSpec {
            client_key_pem: b.signing_key.serialize_pem(),
            ..spec.clone()
        };
        let e = tls_config(&mismatched).expect_err("key of another cert");
        assert!(e.to_string().contains("do not fit"), "{e}");
        assert!(
            !format!("{spec:?}").contains("PRIVATE KEY"),
            "Debug must not show the key"
        );
    }
}
