//! Hot reload: a listener's current `rustls::ServerConfig`, re-read from its files on demand
//! (SIGHUP). A reload that fails anywhere keeps the config in use.

use super::cert::CertInfo;
use super::server::ServerTls;
use super::TlsError;
use futures::{Stream, StreamExt};
use rustls::ServerConfig;
use std::sync::{Arc, RwLock};

/// A listener's TLS config that can be swapped while it serves. Cheap to clone (shared).
/// Connections accepted after a successful [`Reloadable::reload`] use the new config; connections
/// already open keep the one they were accepted with.
#[derive(Clone)]
pub struct Reloadable {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    settings: ServerTls,
    current: RwLock<Current>,
}

struct Current {
    config: Arc<ServerConfig>,
    leaf: CertInfo,
    generation: u64,
}

impl std::fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cur = self.read();
        f.debug_struct("Reloadable")
            .field("label", &self.inner.label)
            .field("settings", &self.inner.settings)
            .field("leaf", &cur.leaf.subject)
            .field("generation", &cur.generation)
            .finish()
    }
}

impl Reloadable {
    /// Loads `settings` now; `label` names the listener in logs ("cluster", "admin", "key").
    pub fn load(label: impl Into<String>, settings: ServerTls) -> Result<Reloadable, TlsError> {
        let (config, leaf) = settings.load(crate::clock::now())?;
        Ok(Reloadable {
            inner: Arc::new(Inner {
                label: label.into(),
                settings,
                current: RwLock::new(Current {
                    config,
                    leaf,
                    generation: 0,
                }),
            }),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        // A poisoned lock only means a panic elsewhere while holding it; the value is whole
        // (it is replaced in one assignment).
        self.inner.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The config for the next connection (one `Arc` clone under a read lock).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.read().config.clone()
    }

    /// What the current leaf certificate says.
    pub fn leaf(&self) -> CertInfo {
        self.read().leaf.clone()
    }

    /// How many successful reloads happened since [`Reloadable::load`].
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// The listener's name in logs.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// The files and policy it is built from.
    pub fn settings(&self) -> &ServerTls {
        &self.inner.settings
    }

    /// Re-reads every file. On success the new config replaces the current one and the new leaf
    /// is returned; on any error the current config stays in use and the error is returned.
    pub fn reload(&self) -> Result<CertInfo, TlsError> {
        let (config, leaf) = self.inner.settings.load(crate::clock::now())?;
        let mut cur = self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *cur = Current {
            config,
            leaf: leaf.clone(),
            generation: cur.generation + 1,
        };
        Ok(leaf)
    }
}

/// Reloads each listener, logging the outcome; returns how many failed.
pub fn reload_all(listeners: &[Reloadable]) -> usize {
    let mut failed = 0;
    for r in listeners {
        match r.reload() {
            Ok(leaf) => tracing::info!(
                listener = r.label(),
                subject = %leaf.subject,
                not_after = %leaf.not_after_text,
                spki_sha256 = %hex::encode(leaf.spki_sha256),
                "TLS certificates reloaded"
            ),
            Err(e) => {
                failed += 1;
                tracing::error!(
                    listener = r.label(),
                    error = %e,
                    "TLS reload failed; still serving the previous certificates"
                );
            }
        }
    }
    failed
}

/// Calls [`reload_all`] on every item of `triggers` until it ends.
pub async fn reload_on(mut triggers: impl Stream<Item = ()> + Unpin, listeners: Vec<Reloadable>) {
    while triggers.next().await.is_some() {
        reload_all(&listeners);
    }
}

/// Spawns a task that reloads `listeners` on every SIGHUP. The handler is installed before this
/// returns, so a SIGHUP sent afterwards never takes the default action (terminating the process).
pub fn spawn_sighup_reloader(
    listeners: Vec<Reloadable>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let triggers = futures::stream::poll_fn(move |cx| hup.poll_recv(cx));
    Ok(tokio::spawn(reload_on(Box::pin(triggers), listeners)))
}
