//! The node's client gateway: its settings turned into a
//! [`distribus::GatewayConfig`], and the demo page it can serve.

use distribus::{GatewayConfig, Host, Page, TlsIdentity, Tokens};

use crate::settings::GatewaySettings;

/// Starts the gateway described by `g` on `host`.
pub(crate) async fn serve(host: &Host, g: &GatewaySettings) -> Result<distribus::Gateway, String> {
    let mut cfg = GatewayConfig::default();
    cfg.grace = g.grace;
    cfg.allow_anonymous = g.anonymous;
    if let Some(path) = &g.tokens {
        let tokens = Tokens::load(path).map_err(|e| e.to_string())?;
        tracing::info!(tokens = tokens.len(), file = %path.display(), "gateway tokens");
        cfg.tokens = Some(tokens);
    }
    if !g.origins.is_empty() {
        cfg.origins = Some(g.origins.clone());
    }
    if let Some((cert, key)) = &g.tls {
        cfg.tls = Some(TlsIdentity::from_pem_files(cert, key).map_err(|e| e.to_string())?);
    }
    if g.ui {
        cfg.pages = ui_pages();
    }
    host.serve_clients(&g.addr.to_string(), cfg)
        .await
        .map_err(|e| format!("cannot serve clients on {}: {}", g.addr, e.report()))
}

/// The browser demo (a chat with a live list of hosts and peers) and the
/// JavaScript client it loads, built into the binary.
fn ui_pages() -> Vec<Page> {
    let page = |path: &str, content_type, body: &'static [u8]| Page {
        path: path.to_string(),
        content_type,
        body: bytes::Bytes::from_static(body),
    };
    vec![
        page(
            "/",
            "text/html; charset=utf-8",
            include_bytes!("../../clients/js/demo/index.html"),
        ),
        page(
            "/distribus-client.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../clients/js/src/index.js"),
        ),
    ]
}
