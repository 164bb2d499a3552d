//! TLS for the stand-ins: Grafana and Loki serve HTTPS with the PEM certificate and key
//! files the installer pushed into their containers.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::PathBuf;

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

    /// A root and a leaf for localhost it signed, as PEM files in `dir`: (root, cert, key).
    fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let root_key = KeyPair::generate().unwrap();
        let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root_cert = root.self_signed(&root_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &Issuer::new(root, root_key))
            .unwrap();
        let paths = (
            dir.join("root.crt"),
            dir.join("tls.crt"),
            dir.join("tls.key"),
        );
        std::fs::write(&paths.0, root_cert.pem()).unwrap();
        std::fs::write(&paths.1, leaf.pem()).unwrap();
        std::fs::write(&paths.2, key.serialize_pem()).unwrap();
        paths
    }

    #[test]
    fn serves_with_the_pushed_certificate_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let (root, cert, key) = pki(dir.path());
        let cfg = from_pem_files(&cert, &key).unwrap();
        assert!(get_health(cfg, &root).ends_with("{\"status\":\"ok\"}"));
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
