//! TLS for both Postgres drivers, set the way libpq users already know: `sslmode` and
//! `sslrootcert` in the connection URL. sqlx (the primary) and tokio-postgres (the
//! replicas) each understand only part of that, with different meanings, so the URL is
//! read once here and each driver is told explicitly what to do. Both use rustls (ring):
//! nothing links OpenSSL at run time.
//!
//! | `sslmode` | encrypted | server certificate checked |
//! | --- | --- | --- |
//! | `disable` | no | - |
//! | `prefer` (the default) | if the server offers it | no |
//! | `require` | yes | no; with `sslrootcert`, as `verify-ca` (libpq does the same) |
//! | `verify-ca` | yes | chain to `sslrootcert` |
//! | `verify-full` | yes | chain to `sslrootcert` and the host name (or IP) in the URL |
//!
//! `sslrootcert=system` trusts the public web PKI roots and, as in libpq, implies
//! `verify-full`. A verifying mode without `sslrootcert` is refused rather than silently
//! trusting some default store.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::DbError;

/// libpq's `sslmode`, minus `allow` (plaintext first), which tokio-postgres cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = DbError;

    fn from_str(s: &str) -> Result<SslMode, DbError> {
        // Case-sensitive, like libpq: `VERIFY-FULL` there is an error too.
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err(DbError::Config(
                "sslmode=allow is not supported (tokio-postgres cannot try plaintext first): \
                 use disable or prefer"
                    .into(),
            )),
            other => Err(DbError::Config(format!(
                "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ))),
        }
    }
}

/// Which certificates a verifying mode trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file with one or more CA certificates (`sslrootcert=/path/ca.crt`).
    File(PathBuf),
    /// The public web PKI roots (`sslrootcert=system`).
    System,
}

/// What a URL asks of TLS, after libpq's rules have been applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    mode: SslMode,
    root_cert: Option<RootCert>,
}

impl PgTls {
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Only set for the modes that verify (a root given with `prefer` is never read).
    pub fn root_cert(&self) -> Option<&RootCert> {
        self.root_cert.as_ref()
    }

    /// Resolves the URL's parameters into one effective setting.
    fn resolve(mode: Option<SslMode>, root: Option<RootCert>) -> Result<PgTls, DbError> {
        let mode = match (mode, &root) {
            (None | Some(SslMode::VerifyFull), Some(RootCert::System)) => SslMode::VerifyFull,
            (Some(m), Some(RootCert::System)) => {
                return Err(DbError::Config(format!(
                    "sslrootcert=system needs sslmode=verify-full, not {m} (as in libpq: the \
                     public roots vouch for names, so the name must be checked)"
                )));
            }
            (None, _) => SslMode::Prefer,
            // libpq: "if a root CA file exists, require behaves like verify-ca".
            (Some(SslMode::Require), Some(RootCert::File(_))) => SslMode::VerifyCa,
            (Some(m @ (SslMode::VerifyCa | SslMode::VerifyFull)), None) => {
                return Err(DbError::Config(format!(
                    "sslmode={m} needs sslrootcert (a CA file, or `system` for the public roots)"
                )));
            }
            (Some(m), _) => m,
        };
        let root_cert = match mode {
            SslMode::VerifyCa | SslMode::VerifyFull => root,
            _ => None,
        };
        Ok(PgTls { mode, root_cert })
    }

    /// The trusted roots of a verifying mode, read now so that a missing or unreadable CA
    /// file fails at start with its path, not at the first connection.
    fn roots(&self) -> Result<Option<RootCertStore>, DbError> {
        match &self.root_cert {
            None => Ok(None),
            Some(RootCert::System) => Ok(Some(RootCertStore::from_iter(
                webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
            ))),
            Some(RootCert::File(path)) => load_ca_file(path).map(Some),
        }
    }
}

fn load_ca_file(path: &Path) -> Result<RootCertStore, DbError> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| DbError::Config(format!("sslrootcert {shown}: cannot read it: {e}")))?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| DbError::Config(format!("sslrootcert {shown}: {e}")))?;
        store
            .add(cert)
            .map_err(|e| DbError::Config(format!("sslrootcert {shown}: {e}")))?;
    }
    if store.is_empty() {
        return Err(DbError::Config(format!(
            "sslrootcert {shown}: no PEM certificate in it"
        )));
    }
    Ok(store)
}

/// Splits a `postgres://` URL into what the drivers are given (the same URL without the
/// TLS parameters) and the TLS settings. Other parameters pass through untouched.
pub(crate) fn split_url(url: &str) -> Result<(String, PgTls), DbError> {
    // The URL holds a password: no message below quotes it.
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(DbError::Config(
            "a postgres:// (or postgresql://) URL is expected".into(),
        ));
    }
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), PgTls::resolve(None, None)?));
    };
    let mut mode = None;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(raw_key)?;
        match key.as_str() {
            // The last occurrence wins, as in libpq and both drivers.
            "sslmode" => mode = Some(decode(raw_value)?.parse()?),
            "sslrootcert" => {
                let value = decode(raw_value)?;
                root = match value.as_str() {
                    "" => None,
                    "system" => Some(RootCert::System),
                    path => Some(RootCert::File(PathBuf::from(path))),
                };
            }
            "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir" => {
                return Err(DbError::Config(format!(
                    "{key}: client certificates and CRLs are not supported"
                )));
            }
            // sqlx's own spellings would reach only one of the two drivers.
            "ssl-mode" | "ssl-root-cert" | "ssl-ca" | "ssl-cert" | "ssl-key" => {
                return Err(DbError::Config(format!(
                    "{key}: use libpq's names, sslmode and sslrootcert"
                )));
            }
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, PgTls::resolve(mode, root)?))
}

fn decode(s: &str) -> Result<String, DbError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| DbError::Config("a URL parameter is not valid percent-encoded UTF-8".into()))
}

/// sqlx options for `url` (the primary's driver), with `sslmode` and `sslrootcert` as this
/// module reads them; `application_name` and the rest as sqlx reads them.
pub fn connect_options(url: &str) -> Result<sqlx::postgres::PgConnectOptions, DbError> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    let (rest, tls) = split_url(url)?;
    tls.roots()?;
    // sqlx trusts the public web roots beside any CA file, so a check of the chain alone
    // would accept a publicly trusted certificate for any name. (sqlx 0.8.6 happens to
    // check the name anyway, launchbadge/sqlx#3793; an upgrade must not quietly weaken
    // this.)
    if tls.mode == SslMode::VerifyCa {
        return Err(DbError::Config(
            "sslmode=verify-ca (or require with sslrootcert) on the primary: its driver \
             also trusts the public CAs, so only verify-full is safe there"
                .into(),
        ));
    }
    let mut opts = PgConnectOptions::from_str(&rest)
        .map_err(|e| DbError::Config(format!("postgres url: {e}")))?;
    opts = opts.ssl_mode(match tls.mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    });
    // With no root certificate sqlx trusts the webpki roots, which is what `system` means.
    // With a file it trusts the file AND those roots: a public CA could vouch for our host
    // name to sqlx (hence verify-full only), not to tokio-postgres (the file only, as libpq).
    if let Some(RootCert::File(path)) = &tls.root_cert {
        opts = opts.ssl_root_cert(path);
    }
    tracing::debug!(sslmode = %tls.mode, root_cert = ?tls.root_cert, "postgres tls (sqlx)");
    Ok(opts)
}

/// tokio-postgres settings and the rustls connector for `url` (the replicas' driver).
pub fn tokio_postgres_config(
    url: &str,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), DbError> {
    let (rest, tls) = split_url(url)?;
    let mut cfg: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::Config(format!("postgres url: {e}")))?;
    // tokio-postgres knows no verify-* modes: it must encrypt, and the connector verifies.
    cfg.ssl_mode(match tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    let connector = MakeRustlsConnect::new(&tls)?;
    tracing::debug!(sslmode = %tls.mode, root_cert = ?tls.root_cert, "postgres tls (tokio-postgres)");
    Ok((cfg, connector))
}

fn provider() -> Arc<CryptoProvider> {
    // Explicit, not the process default: another crate may install a different one.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(tls: &PgTls) -> Result<ClientConfig, DbError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Config(format!("tls: {e}")))?;
    let verifier_error =
        |e: rustls::client::VerifierBuilderError| DbError::Config(format!("tls: {e}"));
    let config = match (tls.mode, tls.roots()?) {
        (SslMode::VerifyFull, Some(roots)) => {
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (SslMode::VerifyCa, Some(roots)) => {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(verifier_error)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        // disable never handshakes; prefer and require encrypt without checking who answers.
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name, so a name error means the chain passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: encrypted, but any certificate is accepted (libpq's meaning).
/// The handshake's signatures are still checked, so the session key belongs to whoever
/// holds the presented certificate.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// tokio-postgres' TLS hook over tokio-rustls.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for MakeRustlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeRustlsConnect").finish_non_exhaustive()
    }
}

impl MakeRustlsConnect {
    pub fn new(tls: &PgTls) -> Result<MakeRustlsConnect, DbError> {
        Ok(MakeRustlsConnect {
            config: Arc::new(client_config(tls)?),
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        // An IP address here is checked against the certificate's IP SANs.
        let name = ServerName::try_from(domain)?.to_owned();
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move { connector.connect(self.name, stream).await.map(RustlsStream) })
    }
}

pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // No tls-server-end-point: SCRAM then authenticates without channel binding, as
        // sqlx does on the primary (`channel_binding=require` would fail).
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "postgres://app:s3cret@db.example:5432/paystream";

    fn tls(query: &str) -> Result<PgTls, DbError> {
        split_url(&format!("{BASE}?{query}")).map(|(_, t)| t)
    }

    fn file(p: &str) -> Option<RootCert> {
        Some(RootCert::File(PathBuf::from(p)))
    }

    fn config_error(r: Result<PgTls, DbError>) -> String {
        match r {
            Err(DbError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn every_mode_without_a_root_certificate() {
        let cases = [
            ("", SslMode::Prefer),
            ("sslmode=disable", SslMode::Disable),
            ("sslmode=prefer", SslMode::Prefer),
            ("sslmode=require", SslMode::Require),
        ];
        for (q, mode) in cases {
            assert_eq!(
                tls(q).unwrap(),
                PgTls {
                    mode,
                    root_cert: None
                },
                "{q}"
            );
        }
        for m in ["verify-ca", "verify-full"] {
            let msg = config_error(tls(&format!("sslmode={m}")));
            assert!(
                msg.contains(&format!("sslmode={m} needs sslrootcert")),
                "{msg}"
            );
        }
    }

    #[test]
    fn every_mode_with_a_ca_file() {
        let cases = [
            ("disable", SslMode::Disable, None),
            ("prefer", SslMode::Prefer, None),
            // libpq: a root certificate turns require into verify-ca.
            ("require", SslMode::VerifyCa, file("/etc/ca.crt")),
            ("verify-ca", SslMode::VerifyCa, file("/etc/ca.crt")),
            ("verify-full", SslMode::VerifyFull, file("/etc/ca.crt")),
        ];
        for (m, mode, root_cert) in cases {
            let q = format!("sslmode={m}&sslrootcert=/etc/ca.crt");
            assert_eq!(tls(&q).unwrap(), PgTls { mode, root_cert }, "{q}");
        }
        // A root certificate alone does not change libpq's default.
        assert_eq!(
            tls("sslrootcert=/etc/ca.crt").unwrap().mode(),
            SslMode::Prefer
        );
    }

    #[test]
    fn system_roots_imply_and_require_verify_full() {
        let full = PgTls {
            mode: SslMode::VerifyFull,
            root_cert: Some(RootCert::System),
        };
        assert_eq!(tls("sslrootcert=system").unwrap(), full);
        assert_eq!(tls("sslrootcert=system&sslmode=verify-full").unwrap(), full);
        for m in ["disable", "prefer", "require", "verify-ca"] {
            let msg = config_error(tls(&format!("sslmode={m}&sslrootcert=system")));
            assert!(msg.contains("needs sslmode=verify-full"), "{msg}");
        }
    }

    #[test]
    fn bad_values_are_config_errors_not_panics() {
        for q in [
            "sslmode=",
            "sslmode=VERIFY-FULL",
            "sslmode=verify_full",
            "sslmode=on",
            "sslmode=allow",
            "sslcert=/c.crt",
            "sslkey=/c.key",
            "sslcrl=/crl.pem",
            "ssl-mode=require",
            "ssl-root-cert=/ca.crt",
            "sslmode=%FF",
        ] {
            let msg = config_error(tls(q));
            assert!(
                !msg.contains("s3cret"),
                "{q}: the password leaked into {msg}"
            );
        }
        assert!(config_error(tls("sslmode=allow")).contains("not supported"));
        assert!(config_error(tls("sslmode=bogus")).contains("not one of"));
        for url in ["", "mysql://a:b@h/db", "host=h user=u password=s3cret"] {
            match split_url(url) {
                Err(DbError::Config(m)) => assert!(!m.contains("s3cret"), "{m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn only_the_tls_parameters_are_taken_out() {
        let (rest, t) = split_url(&format!(
            "{BASE}?application_name=api-1&sslmode=verify-full&connect_timeout=5\
             &sslrootcert=%2Fsrv%2Fmy%20ca.crt&options=-c%20statement_timeout%3D5s"
        ))
        .unwrap();
        assert_eq!(
            rest,
            format!(
                "{BASE}?application_name=api-1&connect_timeout=5&options=-c%20statement_timeout%3D5s"
            )
        );
        assert_eq!(t.root_cert(), file("/srv/my ca.crt").as_ref());
        assert_eq!(split_url(BASE).unwrap().0, BASE);
        assert_eq!(
            split_url(&format!("{BASE}?sslmode=require")).unwrap().0,
            BASE
        );
        // The last occurrence wins; an empty sslrootcert means none.
        let t = tls("sslmode=disable&sslmode=verify-full&sslrootcert=/a&sslrootcert=/b").unwrap();
        assert_eq!(
            (t.mode(), t.root_cert()),
            (SslMode::VerifyFull, file("/b").as_ref())
        );
        assert_eq!(
            tls("sslrootcert=&sslmode=require").unwrap().mode(),
            SslMode::Require
        );
    }

    #[test]
    fn both_drivers_accept_what_is_left() {
        let url = format!("{BASE}?sslmode=require&application_name=api-1");
        let opts = connect_options(&url).unwrap();
        assert_eq!(opts.get_application_name(), Some("api-1"));
        assert!(matches!(
            opts.get_ssl_mode(),
            sqlx::postgres::PgSslMode::Require
        ));
        let (cfg, _) = tokio_postgres_config(&url).unwrap();
        assert_eq!(cfg.get_application_name(), Some("api-1"));
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        // verify-* reach tokio-postgres as require; the connector does the checking.
        let (cfg, _) = tokio_postgres_config(&format!("{BASE}?sslrootcert=system")).unwrap();
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let (cfg, _) = tokio_postgres_config(BASE).unwrap();
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);
        let opts = connect_options(&format!("{BASE}?sslmode=disable")).unwrap();
        assert!(matches!(
            opts.get_ssl_mode(),
            sqlx::postgres::PgSslMode::Disable
        ));
    }

    #[test]
    fn a_ca_file_is_read_when_the_pool_is_made() {
        let missing = format!("{BASE}?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt");
        for msg in [
            connect_options(&missing).unwrap_err().to_string(),
            tokio_postgres_config(&missing).unwrap_err().to_string(),
        ] {
            assert!(
                msg.contains("/nonexistent/ca.crt") && msg.contains("cannot read"),
                "{msg}"
            );
        }
        let dir = std::env::temp_dir().join(format!("paystream-tls-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.crt");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let url = format!("{BASE}?sslmode=verify-ca&sslrootcert={}", not_pem.display());
        let msg = tokio_postgres_config(&url).unwrap_err().to_string();
        assert!(msg.contains("no PEM certificate"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
        // A mode that never verifies never reads it.
        let url = format!("{BASE}?sslmode=prefer&sslrootcert=/nonexistent/ca.crt");
        assert!(tokio_postgres_config(&url).is_ok());
    }

    #[test]
    fn host_names_and_ips_become_server_names() {
        let (_, mut connect) = tokio_postgres_config(&format!("{BASE}?sslmode=require")).unwrap();
        for host in ["db.example", "127.0.0.1", "::1", "localhost"] {
            let made: Result<RustlsConnect, _> =
                MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(&mut connect, host);
            assert!(made.is_ok(), "{host}");
        }
        let made: Result<RustlsConnect, _> =
            MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(&mut connect, "bad name!");
        assert!(made.is_err());
    }
}
