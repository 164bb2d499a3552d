//! TLS for the stand-ins. step-ca gets a CA of its own under $STEPPATH, kept across restarts
//! like the real one (root at `certs/root_ca.crt`), and a fresh leaf for its names at each start,
//! so a client that trusts the root file can reach `https://…:9000/health`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub const ROOT_CERT: &str = "certs/root_ca.crt";
/// The stand-in's own signing key (plain PEM). step-ca's `secrets/root_ca_key` and
/// `intermediate_ca_key` names hold the password-sealed files of `stepkey.rs` instead.
pub const ROOT_KEY: &str = "secrets/standin_signing_key.pem";

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    let cfg =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("certificate and key do not fit: {e}"))?;
    Ok(Arc::new(cfg))
}

/// Grafana and Loki with TLS: PEM files the installer pushed into the container.
pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    server_config(chain, key)
}

fn root_params() -> Result<CertificateParams, String> {
    // Fixed parameters: an Issuer rebuilt from them and the stored key matches the stored root.
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    p.distinguished_name.push(
        DnType::CommonName,
        "Atlas stand-in step-ca Root CA (not step-ca)",
    );
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// Loads the CA under `step_path`, creating it on first start, and signs a leaf for `names`.
/// Returns the server config and the root certificate as PEM (served at `/roots.pem`).
pub fn step_ca(step_path: &Path, names: &[String]) -> Result<(Arc<ServerConfig>, String), String> {
    let (cert_path, key_path) = (step_path.join(ROOT_CERT), step_path.join(ROOT_KEY));
    let params = root_params()?;
    let (root_der, root_key) = if cert_path.exists() && key_path.exists() {
        let key_pem =
            fs::read_to_string(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
        let key =
            KeyPair::from_pem(&key_pem).map_err(|e| format!("{}: {e}", key_path.display()))?;
        let der = CertificateDer::from_pem_file(&cert_path)
            .map_err(|e| format!("{}: {e}", cert_path.display()))?;
        (der, key)
    } else {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        (cert.der().clone(), key)
    };
    let issuer = Issuer::new(params, root_key);
    let leaf_key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut leaf = CertificateParams::new(names.to_vec())
        .map_err(|e| format!("bad DNS name in {names:?}: {e}"))?;
    leaf.distinguished_name
        .push(DnType::CommonName, "atlas stand-in step-ca");
    let leaf = leaf
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let root_pem =
        fs::read_to_string(&cert_path).map_err(|e| format!("{}: {e}", cert_path.display()))?;
    Ok((
        server_config(vec![leaf.der().clone(), root_der], key)?,
        root_pem,
    ))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use crate::http::{Handler, Request, Response, Transport, serve};

    fn client_for(root: &Path) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(root).unwrap())
            .unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }

    fn get_health(cfg: Arc<ServerConfig>, root: &Path) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let h: Handler = Arc::new(|_: &Request| Response::text(200, "{\"status\":\"ok\"}"));
        std::thread::spawn(move || serve(listener, Transport::Tls(cfg), h));
        let conn = rustls::ClientConnection::new(client_for(root), "localhost".try_into().unwrap())
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
        tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut s = String::new();
        tls.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn step_ca_root_is_created_once_and_verifies_the_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let (cfg, pem) = step_ca(dir.path(), &names).unwrap();
        let root = dir.path().join(ROOT_CERT);
        let first = fs::read(&root).unwrap();
        assert_eq!(pem.as_bytes(), first);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let key_mode = fs::metadata(dir.path().join(ROOT_KEY))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777,
            0o600
        );
        assert!(get_health(cfg, &root).ends_with("{\"status\":\"ok\"}"));

        // Second start: same root on disk, and a new leaf still chains to it.
        let (cfg, pem) = step_ca(dir.path(), &names).unwrap();
        assert_eq!(fs::read(&root).unwrap(), first);
        assert_eq!(pem.as_bytes(), first);
        assert!(get_health(cfg, &root).starts_with("HTTP/1.1 200 OK"));
    }

    #[test]
    fn pem_files_errors_name_the_file() {
        let err = from_pem_files(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .unwrap_err();
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
    }
}
