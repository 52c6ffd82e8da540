//! Graceful shutdown: every server's `serve` takes a future that resolves when it must stop.
//! Binaries pass [`signal`]; tests pass a oneshot receiver.

use std::future::Future;

/// A future that resolves on Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
///
/// The handlers are installed when this is called, not when the future is first polled:
/// call it before announcing the listening address, so that a signal sent right after the
/// announcement is never met by the default action (death by signal).
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let (mut interrupt, mut terminate) = match (interrupt, terminate) {
                (Ok(i), Ok(t)) => (i, t),
                (Err(err), _) | (_, Err(err)) => {
                    tracing::error!(%err, "cannot listen for signals; stop with SIGKILL");
                    return std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("Ctrl-C received, shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
