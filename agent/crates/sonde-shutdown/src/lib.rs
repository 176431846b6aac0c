//! SIGINT and SIGTERM as one shutdown signal, for the agent and the collector.
//!
//! Both flush what they hold on either signal: systemd and the container image send SIGINT, a
//! plain `kill` or a runtime that ignores STOPSIGNAL sends SIGTERM. [`listen`] registers both
//! handlers at once, so a signal that arrives while a process is still starting (the agent
//! loading its eBPF programs) is kept for its main loop instead of killing it half started.

use std::sync::OnceLock;

use tokio::sync::watch;

/// Set once SIGINT or SIGTERM arrived (see [`listen`]).
static SHUTDOWN: OnceLock<watch::Receiver<bool>> = OnceLock::new();

/// Starts listening for SIGINT and SIGTERM. Call it first thing inside the tokio runtime; later
/// calls do nothing.
pub fn listen() {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    if SHUTDOWN.set(rx).is_err() {
        return;
    }
    // Registered here, synchronously; the task only waits.
    let (int, term) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    tokio::spawn(async move {
        match (int, term) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            (Ok(mut only), Err(error)) | (Err(error), Ok(mut only)) => {
                tracing::warn!(%error, "listening for one of SIGINT and SIGTERM only");
                only.recv().await;
            }
            (Err(error), Err(_)) => {
                tracing::warn!(%error, "cannot listen for SIGINT or SIGTERM");
                std::future::pending::<()>().await;
            }
        }
        let _ = tx.send(true);
    });
}

/// Resolves once SIGINT or SIGTERM arrived (listening starts here if [`listen`] was not called).
pub async fn signalled() {
    listen();
    if let Some(rx) = SHUTDOWN.get() {
        let mut rx = rx.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// A SIGTERM sent after `listen` (and before anyone waits) is kept: `signalled` resolves.
    #[tokio::test]
    async fn a_sigterm_before_anyone_waits_is_kept() {
        super::listen();
        // SAFETY: signals this process, whose SIGTERM handler `listen` registered.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        tokio::time::timeout(Duration::from_secs(5), super::signalled())
            .await
            .expect("signalled resolves after SIGTERM");
    }
}
