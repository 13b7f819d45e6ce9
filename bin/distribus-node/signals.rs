//! SIGINT and SIGTERM: the first starts a graceful shutdown, the second
//! exits at once. SIGHUP re-reads the allow-list.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Both shutdown signals, registered at start so that an early signal is
/// not handled by the default action.
pub(crate) struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    /// Registers the handlers.
    pub(crate) fn register() -> Result<Signals, String> {
        let e = |e: std::io::Error| format!("cannot install signal handlers: {e}");
        Ok(Signals {
            int: signal(SignalKind::interrupt()).map_err(e)?,
            term: signal(SignalKind::terminate()).map_err(e)?,
            hup: signal(SignalKind::hangup()).map_err(e)?,
        })
    }

    /// Waits for SIGINT, SIGTERM or SIGHUP; returns its name.
    pub(crate) async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }

    /// Waits for SIGINT or SIGTERM, calling `on_hup` at every SIGHUP.
    pub(crate) async fn shutdown(&mut self, mut on_hup: impl FnMut()) -> &'static str {
        loop {
            match self.next().await {
                "SIGHUP" => on_hup(),
                name => return name,
            }
        }
    }

    /// After the first signal: a second one ends the process at once.
    pub(crate) fn exit_on_next(mut self) {
        tokio::spawn(async move {
            let name = self.shutdown(|| {}).await;
            eprintln!("distribus-node: second signal ({name}); exiting now");
            std::process::exit(130);
        });
    }
}
