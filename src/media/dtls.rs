//! DTLS for the media core: one certificate per worker and one cached dimpl `Config`.
//!
//! str0m's default aws-lc-rs DTLS provider builds and validates a fresh `dimpl::Config`
//! for every `Rtc` (1.4–2.3 ms each, see `str0m-notes.md`). A worker creates an `Rtc`
//! per peer connection on the signaling path, so that cost would cap joins per second.
//! [`CachedDtlsProvider`] keeps one `Arc<dimpl::Config>` per MTU (in practice one: every
//! `Rtc` of the core uses str0m's default MTU) and otherwise delegates to dimpl exactly as
//! str0m's own provider does (aws-lc-rs crypto, no server cookie because ICE already
//! proved return routability).
//!
//! Invariant: the provider is a process-wide static because str0m's `CryptoProvider`
//! holds `&'static dyn DtlsProvider`; the cache is lock-free after its first fill.
//! Called by [`super::MediaCore::new`] (certificate) and by str0m inside `Rtc` creation.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::config::{CryptoProvider, DtlsCert, DtlsVersion};
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, ProtocolVersion};

/// A dimpl DTLS provider whose `Config` is built once and shared by every `Rtc`.
#[derive(Debug)]
pub(crate) struct CachedDtlsProvider {
    /// `(mtu, config)` for the first MTU asked for; other MTUs build a fresh config.
    config: OnceLock<(Option<usize>, Arc<dimpl::Config>)>,
}

/// The one provider of the process (str0m needs a `'static` reference).
static PROVIDER: CachedDtlsProvider = CachedDtlsProvider {
    config: OnceLock::new(),
};

fn build_config(mtu: Option<usize>) -> Result<Arc<dimpl::Config>, CryptoError> {
    // ICE verifies return routability before DTLS starts, so server cookies only add a
    // round trip (str0m's own provider makes the same choice).
    let mut builder = dimpl::Config::builder().use_server_cookie(false);
    if let Some(mtu) = mtu {
        builder = builder.mtu(mtu);
    }
    builder
        .build()
        .map(Arc::new)
        .map_err(|e| CryptoError::Other(format!("dimpl config creation failed: {e}")))
}

impl CachedDtlsProvider {
    fn config_for(&self, mtu: Option<usize>) -> Result<Arc<dimpl::Config>, CryptoError> {
        if let Some((cached_mtu, config)) = self.config.get() {
            if *cached_mtu == mtu {
                return Ok(Arc::clone(config));
            }
            return build_config(mtu);
        }
        let config = build_config(mtu)?;
        // A concurrent first fill from another worker may win; both configs are
        // equivalent, so whichever is stored is fine.
        let _ = self.config.set((mtu, Arc::clone(&config)));
        Ok(config)
    }
}

impl DtlsProvider for CachedDtlsProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        dimpl::certificate::generate_self_signed_certificate()
            .ok()
            .map(|cert| DtlsCert {
                certificate: cert.certificate,
                private_key: cert.private_key,
            })
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let config = self.config_for(mtu)?;
        let cert = dimpl::DtlsCertificate {
            certificate: cert.certificate.clone(),
            private_key: cert.private_key.clone(),
        };
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert, now),
            other => {
                return Err(CryptoError::Other(format!(
                    "unsupported DTLS version: {other}"
                )));
            }
        };
        Ok(Box::new(CachedDtlsInstance { dtls }))
    }
}

/// One DTLS session; a thin forwarding wrapper (the trait cannot be implemented on
/// `dimpl::Dtls` here because both are foreign).
struct CachedDtlsInstance {
    dtls: dimpl::Dtls,
}

impl std::fmt::Debug for CachedDtlsInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material must never reach a log line.
        f.write_str("CachedDtlsInstance")
    }
}

impl DtlsInstance for CachedDtlsInstance {
    fn set_active(&mut self, active: bool) {
        self.dtls.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.dtls.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.dtls.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.dtls.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.dtls.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.dtls.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.dtls.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.dtls.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.dtls.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.dtls.close()
    }
}

/// The crypto provider for every `Rtc` of the core: str0m's default (aws-lc-rs) for
/// SRTP, HMAC and hashes, with the cached DTLS provider swapped in.
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = str0m::crypto::from_feature_flags();
    provider.dtls_provider = &PROVIDER;
    Arc::new(provider)
}

/// A fresh self-signed DTLS certificate (a few ms: call once per core).
pub(crate) fn generate_certificate() -> Option<DtlsCert> {
    PROVIDER.generate_certificate()
}
