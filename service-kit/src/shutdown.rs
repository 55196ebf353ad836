//! The signal that stops a process cleanly.

use std::future::Future;

/// Listens for SIGTERM and Ctrl-C (SIGINT) from the moment it is called, and resolves
/// on the first. Registering at the call, not at the first poll, means a signal that
/// arrives while the process is still starting is not lost (nor fatal).
pub fn signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => tokio::select! {
                    _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
                    _ = interrupt.recv() => tracing::info!("Ctrl-C received; shutting down"),
                },
                (Err(error), _) | (_, Err(error)) => {
                    tracing::error!(%error, "cannot listen for signals; stop the process with SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received; shutting down");
        } else {
            std::future::pending::<()>().await;
        }
    }
}
